"""`netrun extract`: a model over a whole dataset (thin layer over netrun.extract)."""
import click

from ..memory import parse_size
from .common import json_option, parse_assignments, parse_shape, print_json, warn


@click.command("extract")
@click.argument("model")
@click.option("--weights", "-w", metavar="W.caffemodel",
              help="Trained parameters; without them parameters come from their fillers (--seed).")
@click.option("--data", required=True, metavar="SOURCE",
              help="Directory or glob of images, ImageData list file ('path label'), HDF5Data "
                   "list of .h5 files, LMDB of Datums, .h5 or .npy.")
@click.option("--out", required=True, metavar="OUT.zarr|OUT.h5",
              help="Zarr store (path or fsspec URL) or HDF5 file (.h5).")
@click.option("--blobs", default=None, metavar="B1,B2",
              help="Blobs to store, one array each (default: the net outputs).")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Items per forward pass (the last batch is padded to it).")
@click.option("--chunk-size", type=int, default=None, metavar="N",
              help="Items per task and per stored chunk: a multiple of --batch-size "
                   "(default: the batch size).")
@click.option("--engine", type=click.Choice(["local", "dask"]), default="local",
              show_default=True, help="Run here, or one task per chunk on a Dask cluster.")
@click.option("--scheduler", default="local:2", show_default=True, metavar="local:N|tcp://H:P",
              help="--engine dask: an embedded LocalCluster of N worker processes, or the "
                   "address of a running scheduler.")
@click.option("--resume", is_flag=True, help="Continue OUT: skip the chunks recorded complete.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--skip-bad", is_flag=True,
              help="Record unreadable or ill-shaped items in OUT (their rows stay zero) and go "
                   "on, instead of stopping at the first.")
@click.option("--input-name", default=None, metavar="NAME",
              help="The input blob that takes the items (checked against the net's only input).")
@click.option("--input-shape", multiple=True, metavar="NAME=D0,D1,...",
              help="Override an input's declared shape (its H x W is what images are resized to).")
@click.option("--h5-dataset", default=None, metavar="NAME",
              help="HDF5 sources: the dataset holding the items (default: data).")
@click.option("--root-folder", default=None, metavar="DIR",
              help="ImageData lists: folder the listed paths are relative to (default: the "
                   "current folder if the first path exists there, else the list's folder).")
@click.option("--raw-scale", type=float, default=None, metavar="R",
              help="Images: pixels read as [0, 1] times R; default: 0-255 values.")
@click.option("--mean", default=None, metavar="B,G,R", help="Images: subtract this mean.")
@click.option("--mean-file", default=None, metavar="MEAN.binaryproto",
              help="Images: subtract this mean image (.binaryproto or .npy).")
@click.option("--scale", type=float, default=None, metavar="S",
              help="Images: multiply by S after the mean.")
@click.option("--phase", type=click.Choice(["train", "test"], case_sensitive=False),
              default="test", show_default=True)
@click.option("--level", type=int, default=0)
@click.option("--stage", multiple=True)
@click.option("--set", "edits", multiple=True, metavar="PATH=VALUE",
              help="Edit the net before building (repeatable).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--allow-python-layers", is_flag=True)
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Refuse nets needing more memory per process than this.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@json_option
def extract_command(model, **o):
    """Run MODEL over every item of --data; store --blobs in --out.

    \b
    Examples:
      netrun extract deploy.prototxt -w w.caffemodel --data images/ --out feats.zarr \\
          --blobs fc7,prob --mean 104,117,123
      netrun extract deploy.prototxt -w w.caffemodel --data train_lmdb --out feats.zarr \\
          --engine dask --scheduler tcp://scheduler:8786
    """
    from .. import extract
    shapes = {n: parse_shape(n, v) for n, v in parse_assignments(o["input_shape"], "--input-shape")}
    report = {}
    extract(model, o["data"], o["out"], weights=o["weights"], blobs=o["blobs"],
            batch_size=o["batch_size"], chunk_size=o["chunk_size"], engine=o["engine"],
            scheduler=o["scheduler"], resume=o["resume"], overwrite=o["overwrite"],
            skip_bad=o["skip_bad"], raw_scale=o["raw_scale"], mean=o["mean"],
            mean_file=o["mean_file"], scale=o["scale"], input_name=o["input_name"],
            input_shape=shapes, h5_dataset=o["h5_dataset"], root_folder=o["root_folder"],
            phase=o["phase"], level=o["level"], stages=o["stage"], edits=o["edits"],
            dtype=o["dtype"], seed=o["seed"], allow_python_layers=o["allow_python_layers"],
            max_memory=parse_size(o["max_memory"]) if o["max_memory"] else "default",
            progress=None if o["progress"] is None else (o["progress"] and not o["quiet"]),
            report=report, warn=warn)
    if o["as_json"]:
        print_json(report)
    elif not o["quiet"]:
        skipped = report["skipped"]
        click.echo(f"{report['out']}: {report['items']} items, {len(report['blobs'])} blob(s) "
                   f"({', '.join(report['blobs'])}); computed {report['chunks_computed']} of "
                   f"{report['chunks']} chunks in {report['seconds']:.1f} s "
                   f"({report['items_per_second'] or 0:,.1f} items/s)"
                   + (f"; {len(skipped)} items skipped" if skipped else ""))
        for s in skipped[:10]:
            click.echo(f"  skipped item {s['index']} ({s['key']}): {s['reason']}")
        if len(skipped) > 10:
            click.echo(f"  ... and {len(skipped) - 10} more (the store's _skipped array)")
