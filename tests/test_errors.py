"""Every user error is one line naming the file/line or layer/blob, exit code 2, no traceback."""
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from netrun.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
INPUT = 'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'


def fails(*args, needles=()):
    res = CliRunner().invoke(main, [str(a) for a in args])
    out = res.output
    assert res.exit_code == 2, out
    assert "Traceback" not in out
    lines = [l for l in out.splitlines() if l.startswith("netrun: error:")]
    assert len(lines) == 1, out
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def fails_without_allocating(*args, needles=(), limit=32 << 20):
    """`fails`, and the peak of Python's and numpy's traced allocations stayed under `limit`:
    the error came from the declared sizes, before anything of that size was built (a memory
    figure, not a timing: it holds on a loaded machine)."""
    import tracemalloc
    tracemalloc.start()
    try:
        line = fails(*args, needles=needles)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak / 2**20:.0f} MiB allocated before: {line}"
    return line


def write(tmp_path, text, name="net.prototxt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_missing_file(tmp_path):
    fails("forward", tmp_path / "none.prototxt", needles=["none.prototxt", "no such file"])


def test_directory_instead_of_file(tmp_path):
    d = tmp_path / "dir.prototxt"
    d.mkdir()
    fails("forward", d, needles=["dir.prototxt"])


def test_binary_file_as_prototxt(tmp_path):
    p = tmp_path / "w.prototxt"
    p.write_bytes(b"\x08\x96\x01\xff\xfe\x00garbage")
    fails("forward", p, needles=[str(p)])


def test_syntax_error_line_and_column(tmp_path):
    p = write(tmp_path, INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y"\n')
    fails("forward", p, needles=[f"{p}:"])


def test_unknown_field(tmp_path):
    p = write(tmp_path, INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y"\n'
                                '  relu_param { negative_slop: 0.1 } }\n')
    line = fails("forward", p, needles=[f"{p}:3:", "negative_slop"])
    assert "ReLUParameter" in line


def test_unknown_layer_type_suggests_close_types(tmp_path):
    p = write(tmp_path, INPUT + 'layer { name: "up" type: "Sigmod" bottom: "x" top: "y" }\n')
    fails("forward", p, needles=[f"{p}:2", 'layer "up"', '"Sigmod"', "Sigmoid"])


def test_include_and_exclude(tmp_path):
    p = write(tmp_path, INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y"\n'
                                '  include { phase: TEST } exclude { phase: TRAIN } }\n')
    fails("forward", p, needles=[f"{p}:2", 'layer "r"', "include", "exclude"])


def test_missing_bottom(tmp_path):
    p = write(tmp_path, INPUT + 'layer { name: "L" type: "ReLU" bottom: "nope" top: "y" }\n')
    fails("forward", p, needles=[f"{p}:2", 'Unknown bottom blob "nope" (layer "L", bottom 0)'])


def test_cycle(tmp_path):
    p = write(tmp_path, INPUT +
              'layer { name: "a" type: "Eltwise" bottom: "x" bottom: "b" top: "a" }\n'
              'layer { name: "b" type: "ReLU" bottom: "a" top: "b" }\n')
    fails("forward", p, needles=['Unknown bottom blob "b"', 'later layer "b"', "cycle"])


def test_top_produced_twice(tmp_path):
    p = write(tmp_path, INPUT +
              'layer { name: "a" type: "ReLU" bottom: "x" top: "y" }\n'
              'layer { name: "b" type: "Sigmoid" bottom: "x" top: "y" }\n')
    fails("forward", p, needles=[f"{p}:3", 'layer "b"', '"y"', 'layer "a"'])


def test_wrong_number_of_bottoms(tmp_path):
    p = write(tmp_path, INPUT + 'layer { name: "e" type: "Eltwise" bottom: "x" top: "y" }\n')
    fails("forward", p, needles=[f"{p}:2", 'layer "e" (Eltwise)', "at least 2 bottom"])


def test_wrong_number_of_tops(tmp_path):
    p = write(tmp_path, INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" top: "z" }\n')
    fails("forward", p, needles=['layer "r" (ReLU)', "1 top"])


def test_shapes_that_do_not_fit(tmp_path):
    p = write(tmp_path, INPUT +
              'layer { name: "x2" type: "Input" top: "x2" input_param { shape { dim: 2 dim: 4 } } }\n'
              'layer { name: "e" type: "Eltwise" bottom: "x" bottom: "x2" top: "y" }\n')
    fails("forward", p, needles=[f"{p}:3", 'layer "e"', "(2, 4)", "(2, 3)"])


@pytest.mark.parametrize("dims", ["dim: 0 dim: 3", "dim: -2 dim: 3"])
def test_zero_or_negative_dims(tmp_path, dims):
    p = write(tmp_path, f'layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n')
    fails("forward", p, needles=[f"{p}:1", 'layer "x"', "dimension"])


def test_absurd_dims_fail_fast_with_the_figure(tmp_path):
    p = write(tmp_path, 'layer { name: "x" type: "Input" top: "x" '
                        'input_param { shape { dim: 100000000000 dim: 3 } } }\n'
                        'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')
    fails_without_allocating("forward", p, needles=["TiB", '"x"', "--max-memory"])


def test_max_memory_flag(tmp_path):
    fails("forward", MODELS / "mlp_loss.prototxt", "--max-memory", "1K", needles=["limit of 1.0 KiB"])


def _ip_net(tmp_path):
    return write(tmp_path, INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                                   'inner_product_param { num_output: 4 } }\n')


def test_weights_truncated(tmp_path):
    from netrun import Net
    net = Net(str(_ip_net(tmp_path)))
    w = tmp_path / "w.caffemodel"
    net.save(str(w))
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    fails("forward", _ip_net(tmp_path), "--weights", w, needles=["w.caffemodel"])


def test_weights_not_a_netparameter(tmp_path):
    w = tmp_path / "w.caffemodel"
    w.write_bytes(os.urandom(64))
    fails("forward", _ip_net(tmp_path), "--weights", w, needles=["w.caffemodel"])


def test_weights_shape_mismatch(tmp_path):
    from netrun import Net
    other = write(tmp_path, INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                                    'inner_product_param { num_output: 5 } }\n', "other.prototxt")
    w = tmp_path / "w.caffemodel"
    Net(str(other)).save(str(w))
    fails("forward", _ip_net(tmp_path), "--weights", w,
          needles=['layer "ip"', "blob 0", "(5, 3)", "(4, 3)"])


def test_input_wrong_shape(tmp_path):
    from netrun import Net
    w = tmp_path / "w.caffemodel"
    Net(str(_ip_net(tmp_path))).save(str(w))
    np.save(tmp_path / "x.npy", np.zeros((2, 5), np.float32))
    fails("forward", _ip_net(tmp_path), "--weights", w, "--input", f"x={tmp_path / 'x.npy'}",
          needles=['layer "ip"', "(4, 3)", "(4, 5)"])


def test_input_wrong_dtype(tmp_path):
    np.save(tmp_path / "x.npy", np.array([["a", "b", "c"]] * 2))
    fails("forward", _ip_net(tmp_path), "--input", f"x={tmp_path / 'x.npy'}",
          needles=["x.npy", "not numeric"])


def test_npz_key_names_no_input(tmp_path):
    np.savez(tmp_path / "in.npz", nope=np.zeros((2, 3), np.float32))
    fails("forward", _ip_net(tmp_path), "--inputs", tmp_path / "in.npz", needles=['"nope"'])


def test_pickled_npy_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    fails("forward", _ip_net(tmp_path), "--input", f"x={tmp_path / 'x.npy'}",
          needles=["x.npy", "pickle"])


def test_set_errors(tmp_path):
    fails("forward", MODELS / "relu_demo.prototxt", "--set", "relu.relu_param.nope=1",
          needles=["--set", "nope"])
    fails("forward", MODELS / "relu_demo.prototxt", "--set", "relu.relu_param.negative_slope=x",
          needles=["--set", "not a number"])
    fails("forward", MODELS / "relu_demo.prototxt", "--set", "net.force_backward=maybe",
          needles=["--set", "true or false"])


def test_debug_shows_traceback(tmp_path):
    res = CliRunner().invoke(main, ["--debug", "forward", str(tmp_path / "none.prototxt")])
    assert res.exit_code != 0 and res.exc_info is not None


def test_failed_dump_leaves_no_file(tmp_path, monkeypatch):
    """A failure while writing --dump-diffs leaves no (partial) output file."""
    out = tmp_path / "d.npz"
    real = np.savez

    def explode(f, **arrays):
        real(f, **dict(list(arrays.items())[:1]))    # half written...
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(np, "savez", explode)
    res = CliRunner().invoke(main, ["backward", str(MODELS / "mlp_loss.prototxt"),
                                    "--dump-diffs", str(out), "-q"])
    assert res.exit_code != 0
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_output_folder_missing(tmp_path):
    fails("forward", MODELS / "relu_demo.prototxt", "--save", tmp_path / "no" / "x.npz",
          needles=["x.npz", "does not exist"])


# -- scenarios of issue 6 that had no test yet ------------------------------------------------
IMAGE_NET = ('layer { name: "data" type: "Input" top: "data" '
             'input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
             'layer { name: "r" type: "ReLU" bottom: "data" top: "y" }\n')


def test_unreadable_file(tmp_path, monkeypatch):
    """A file that exists but cannot be read (permissions): named, with the OS reason."""
    import builtins
    p = write(tmp_path, INPUT)
    real_open = builtins.open

    def deny(file, *a, **k):
        if str(file) == str(p):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", deny)
    fails("forward", p, needles=[str(p), "cannot read", "Permission denied"])


def test_syntax_error_names_line_and_column(tmp_path):
    p = write(tmp_path, INPUT + 'layer { name "r" type: "ReLU" }\n')
    fails("forward", p, needles=[f"{p}:2:14:", 'Expected ":"'])


def test_image_that_is_not_an_image(tmp_path):
    p = write(tmp_path, IMAGE_NET)
    img = tmp_path / "broken.png"
    img.write_text("this is not an image\n")
    fails("forward", p, "--input", f"data={img}",
          needles=[str(img), "--input data", "cannot decode image"])


def test_truncated_png(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image
    p = write(tmp_path, IMAGE_NET)
    good = tmp_path / "good.png"
    pixels = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    Image.fromarray(pixels).save(good)
    data = good.read_bytes()
    img = tmp_path / "trunc.png"
    img.write_bytes(data[: len(data) // 2])
    fails("forward", p, "--input", f"data={img}",
          needles=[str(img), "--input data", "cannot decode image"])


def test_empty_image_file(tmp_path):
    p = write(tmp_path, IMAGE_NET)
    img = tmp_path / "empty.jpg"
    img.write_bytes(b"")
    fails("forward", p, "--input", f"data={img}", needles=[str(img), "cannot decode image"])


@pytest.mark.parametrize("layer", [
    'layer { name: "big" type: "Convolution" bottom: "data" top: "y" '
    'convolution_param { num_output: 2 kernel_size: 7 pad: 1 } }\n',
    'layer { name: "big" type: "Pooling" bottom: "data" top: "y" '
    'pooling_param { pool: MAX kernel_size: 7 pad: 1 } }\n',
    'layer { name: "big" type: "Pooling" bottom: "data" top: "y" '
    'pooling_param { pool: AVE kernel_h: 2 kernel_w: 9 } }\n',
])
def test_kernel_larger_than_padded_input(tmp_path, layer):
    p = write(tmp_path, 'layer { name: "data" type: "Input" top: "data" '
                        'input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n' + layer)
    fails("forward", p, needles=[f"{p}:2", 'layer "big"', "(1, 3, 4, 4)", "kernel"])


@pytest.mark.parametrize("value", [np.array([["a", "b", "c"]] * 2), np.zeros((2, 3), complex)])
def test_npz_input_wrong_dtype(tmp_path, value):
    np.savez(tmp_path / "in.npz", x=value)
    fails("forward", _ip_net(tmp_path), "--inputs", tmp_path / "in.npz",
          needles=["in.npz[x]", "not numeric", str(value.dtype)])


def test_npz_input_wrong_shape(tmp_path):
    from netrun import Net
    w = tmp_path / "w.caffemodel"
    Net(str(_ip_net(tmp_path))).save(str(w))
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 7), np.float32))
    fails("forward", _ip_net(tmp_path), "--weights", w, "--inputs", tmp_path / "in.npz",
          needles=['layer "ip"', "(4, 3)", "(4, 7)"])


def test_npz_that_is_not_an_archive(tmp_path):
    bad = tmp_path / "in.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    fails("forward", _ip_net(tmp_path), "--inputs", bad, needles=["in.npz", "--inputs"])


def test_pickled_npz_refused(tmp_path):
    np.savez(tmp_path / "in.npz", x=np.array([{"a": 1}], dtype=object))
    fails("forward", _ip_net(tmp_path), "--inputs", tmp_path / "in.npz", needles=["in.npz"])


def test_input_key_names_no_input(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((2, 3), np.float32))
    fails("forward", _ip_net(tmp_path), "--input", f"nope={tmp_path / 'z.npy'}", needles=['"nope"'])


def test_weights_file_missing(tmp_path):
    fails("forward", _ip_net(tmp_path), "--weights", tmp_path / "none.caffemodel",
          needles=["none.caffemodel"])


def test_weights_blob_count_mismatch(tmp_path):
    """A caffemodel whose layer has a different number of blobs: layer named, both counts."""
    from netrun import Net
    other = write(tmp_path, INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                                    'inner_product_param { num_output: 4 bias_term: false } }\n',
                  "other.prototxt")
    w = tmp_path / "w.caffemodel"
    Net(str(other)).save(str(w))
    fails("forward", _ip_net(tmp_path), "--weights", w, needles=['layer "ip"'])


@pytest.mark.parametrize("param", [
    'convolution_param { num_output: 2 kernel_size: 3 stride: 0 }',
    'convolution_param { num_output: 0 kernel_size: 3 }',
    'convolution_param { num_output: 2 kernel_size: 0 }',
    'convolution_param { num_output: 2 kernel_size: 3 group: 2 }',
])
def test_bad_convolution_parameters(tmp_path, param):
    p = write(tmp_path, 'layer { name: "data" type: "Input" top: "data" '
                        'input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
                        f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "y" {param} }}\n')
    fails("forward", p, needles=[f"{p}:2", 'layer "c" (Convolution)'])


def test_axis_out_of_range(tmp_path):
    p = write(tmp_path, INPUT + 'layer { name: "s" type: "Softmax" bottom: "x" top: "y" '
                                'softmax_param { axis: 5 } }\n')
    fails("forward", p, needles=[f"{p}:2", 'layer "s" (Softmax)', "axis 5"])


def test_set_path_names_no_layer(tmp_path):
    fails("forward", MODELS / "relu_demo.prototxt", "--set", "nolayer.relu_param.negative_slope=1",
          needles=["--set", "nolayer"])


def test_set_enum_value_unknown(tmp_path):
    p = write(tmp_path, 'layer { name: "data" type: "Input" top: "data" '
                        'input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n'
                        'layer { name: "p" type: "Pooling" bottom: "data" top: "y" '
                        'pooling_param { kernel_size: 2 } }\n')
    fails("forward", p, "--set", "p.pooling_param.pool=MEDIAN", needles=["--set", "MEDIAN"])


def test_weights_blob_with_too_few_values(tmp_path):
    """Right shape, wrong number of values: the layer, the blob index and both counts."""
    from netrun import Net
    from netrun.io.caffemodel import net_to_proto
    param = net_to_proto(Net(str(_ip_net(tmp_path))))
    del param.layer[1].blobs[0].data[5:]
    w = tmp_path / "w.caffemodel"
    w.write_bytes(param.SerializeToString())
    fails("forward", _ip_net(tmp_path), "--weights", w,
          needles=["w.caffemodel", 'layer "ip"', "blob 0", "holds 5 values", "(4, 3)", "12"])


# -- regressions: crashes the fuzzer found (tests/test_fuzz.py) --------------------------------
CONV_INPUT = ('layer { name: "x" type: "Input" top: "x" '
              'input_param { shape { dim: 2 dim: 3 dim: 6 dim: 5 } } }\n')


@pytest.mark.parametrize("edit, needles", [
    ("c.convolution_param.num_output=99999999999", ["out of range", "num_output"]),
    ("c.convolution_param.num_output=-1", ["out of range", "num_output"]),
    ("c.convolution_param.kernel_size=1,-3", ["out of range", "kernel_size"]),
    ("net.layer[100000000].name=x", ["index 100000000", "past the end of layer"]),
])
def test_set_value_out_of_range(tmp_path, edit, needles):
    """Used to raise ValueError from protobuf, or to loop adding 10^8 layers."""
    p = write(tmp_path, CONV_INPUT + 'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                                     'convolution_param { num_output: 2 kernel_size: 3 } }\n')
    fails("forward", p, "--set", edit, needles=["--set"] + needles)


@pytest.mark.parametrize("layer", [
    'layer { name: "L" type: "Pooling" bottom: "x" top: "x" pooling_param { kernel_size: 2 } }',
    'layer { name: "L" type: "Convolution" bottom: "x" top: "x" '
    'convolution_param { num_output: 3 kernel_size: 1 } }',
    'layer { name: "L" type: "InnerProduct" bottom: "x" top: "x" inner_product_param { num_output: 3 } }',
    'layer { name: "L" type: "EuclideanLoss" bottom: "x" bottom: "x2" top: "x" }',
])
def test_in_place_refused_where_it_cannot_work(tmp_path, layer):
    """In place, these layers changed the shape of their own input (ValueError in forward)."""
    p = write(tmp_path, CONV_INPUT.replace('"x"', '"x2"') + CONV_INPUT + layer + "\n")
    fails("forward", p, needles=[f"{p}:3", 'layer "L"', "cannot run in place"])


@pytest.mark.parametrize("filler", [
    'type: "uniform" min: 1 max: 0',
    'type: "uniform" min: -inf max: 1',
    'type: "gaussian" std: -1',
    'type: "nonsense"',
])
def test_bad_filler(tmp_path, filler):
    """Used to raise ValueError/OverflowError from numpy's random generator."""
    p = write(tmp_path, CONV_INPUT + 'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                                     f'convolution_param {{ num_output: 2 kernel_size: 3 '
                                     f'weight_filler {{ {filler} }} }} }}\n')
    fails("forward", p, needles=[f"{p}:2", 'layer "c"', "filler"])


def test_scalar_parameter_with_fan_filler(tmp_path):
    """A 0-axis parameter (shared PReLU slope) with xavier/positive_unitball: IndexError before."""
    p = write(tmp_path, CONV_INPUT + 'layer { name: "p" type: "PReLU" bottom: "x" top: "y" '
                                     'prelu_param { channel_shared: true filler { type: "xavier" } } }\n'
                                     'layer { name: "q" type: "PReLU" bottom: "y" top: "z" '
                                     'prelu_param { channel_shared: true '
                                     'filler { type: "positive_unitball" } } }\n')
    res = CliRunner().invoke(main, ["forward", str(p), "-q"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("layer", [
    # a 300x300 kernel padded by 299 on a 6x5 input: 93 GiB of im2col columns
    'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
    'convolution_param { num_output: 2 kernel_size: 300 pad: 299 } }',
    # depthwise (one channel per group): a padded copy of the whole batch
    'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
    'convolution_param { num_output: 3 group: 3 kernel_size: 3 pad: 100000 stride: 1000 } }',
    # pad 65536: a 131078 x 131077 padded input
    'layer { name: "c" type: "Im2col" bottom: "x" top: "y" '
    'convolution_param { kernel_size: 2 stride: 1000 pad: 65536 } }',
    'layer { name: "c" type: "Pooling" bottom: "x" top: "y" '
    'pooling_param { pool: MAX kernel_size: 100000 pad: 99999 stride: 99999 } }',
])
def test_scratch_memory_is_budgeted(tmp_path, layer):
    """Temporary buffers (padded copies, im2col columns) used to raise MemoryError."""
    p = write(tmp_path, CONV_INPUT + layer + "\n")
    fails("forward", p, "--max-memory", "64M", needles=[f"{p}:2", 'layer "c"', "scratch memory",
                                                        "GiB", "--max-memory"])


def test_absurd_input_behind_a_split_is_charged(tmp_path):
    """A Split (or a loss weight) used to allocate an input before the budget saw it."""
    p = write(tmp_path, 'layer { name: "x" type: "Input" top: "x" loss_weight: 1 '
                        'input_param { shape { dim: 2147483647 } } }\n'
                        'layer { name: "a" type: "ReLU" bottom: "x" top: "a" }\n'
                        'layer { name: "b" type: "ReLU" bottom: "x" top: "b" }\n')
    fails_without_allocating("forward", p, "--max-memory", "64M", needles=['blob "x"', "GiB"])


def test_huge_pooling_stride_runs(tmp_path):
    """Stride 2^31-1 on a 6x5 input: valid in Caffe (the second window lies outside);
    used to allocate a padded buffer as long as the stride (ValueError / MemoryError)."""
    p = write(tmp_path, CONV_INPUT + 'layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
                                     'pooling_param { pool: AVE kernel_size: 3 stride: 2147483647 } }\n'
                                     'layer { name: "q" type: "Pooling" bottom: "x" top: "z" '
                                     'pooling_param { pool: AVE kernel_size: 3 stride: 7 } }\n')
    from netrun import Net
    net = Net(str(p), max_memory=64 << 20)
    net.blobs["x"].data[...] = np.arange(180).reshape(2, 3, 6, 5)
    out = net.forward()
    assert out["y"].shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(out["y"], out["z"])     # both: second window outside


def test_huge_lrn_window_runs(tmp_path):
    """local_size 2^31-1 used to pad the channel axis to 2^31 (MemoryError)."""
    p = write(tmp_path, CONV_INPUT + 'layer { name: "n" type: "LRN" bottom: "x" top: "y" '
                                     'lrn_param { local_size: 2147483647 alpha: 1 beta: 0.75 } }\n'
                                     'layer { name: "m" type: "LRN" bottom: "x" top: "z" '
                                     'lrn_param { local_size: 7 alpha: 1 beta: 0.75 } }\n')
    from netrun import Net
    net = Net(str(p), max_memory=64 << 20)
    net.blobs["x"].data[...] = np.linspace(-1, 1, 180).reshape(2, 3, 6, 5)
    out = net.forward()
    x = net.blobs["x"].data.astype(np.float64)
    for name, n in (("y", 2147483647), ("z", 7)):      # both windows cover all 3 channels
        s = 1 + (1.0 / n) * (x * x).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(out[name], x * s ** -0.75, rtol=1e-5)


def test_nan_index_in_batch_reindex(tmp_path):
    p = write(tmp_path, CONV_INPUT + 'layer { name: "i" type: "Input" top: "i" '
                                     'input_param { shape { dim: 2 } } }\n'
                                     'layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "i" '
                                     'top: "y" }\n')
    np.save(tmp_path / "i.npy", np.array([0, np.nan], np.float32))
    fails("forward", p, "--input", f"i={tmp_path / 'i.npy'}", needles=['layer "r"', "index nan"])


def test_safety_net_names_the_layer_and_chains(tmp_path, monkeypatch):
    """A non-NetrunError from setup/reshape (a check netrun lacks) becomes a user error
    naming the layer; --debug still shows the original exception."""
    from netrun.layers.neuron import ReLU

    def broken(self, bottom, top):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(ReLU, "reshape", broken)
    p = write(tmp_path, INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')
    fails("forward", p, needles=[f"{p}:2", 'layer "r" (ReLU)', "invalid parameters",
                                 "ZeroDivisionError"])
    res = CliRunner().invoke(main, ["--debug", "forward", str(p)])
    assert res.exit_code != 0
    assert isinstance(res.exc_info[1].__cause__, ZeroDivisionError)


def test_safety_net_is_not_for_forward(tmp_path, monkeypatch):
    """A bug in forward stays a bug: not dressed up as a user error."""
    from netrun.layers.neuron import ReLU

    def broken(self, bottom, top):
        raise ValueError("bug")

    monkeypatch.setattr(ReLU, "forward", broken)
    p = write(tmp_path, INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')
    res = CliRunner().invoke(main, ["forward", str(p)])
    assert res.exit_code != 2 and isinstance(res.exc_info[1], ValueError)
