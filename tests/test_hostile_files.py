"""Hostile files: every reader of outside data checks the sizes a file declares
before it allocates or decodes, and fails with one line naming the file, exit 2.

One test per reader with a small file declaring huge contents (a decompression
bomb PNG, .npy/.npz headers, an HDF5 dataset, LMDB Datums, a caffemodel, a mean
file, a solverstate, prototxts), across the commands that read them.  The two
cases of issue 16 also run as subprocesses whose time and peak memory are
measured (bounds are generous: the figures are machine-dependent).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hostile import (npy_bytes, npy_header, npy_huge_header_length, png_bytes, png_header_only,
                     sparse_file, write_npz)
from netrun import Net
from netrun.cli import main
from netrun.errors import NetrunError
from netrun.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
DIGITS = MODELS / "digits" / "digits_deploy.prototxt"      # Input data (1, 1, 8, 8)
MLP = MODELS / "mlp_loss.prototxt"                         # Inputs data (4, 10), label (4,)
HUGE_SHAPE = (100000, 100000, 10)                          # 372.5 GiB of float32


def fails(*args, needles=()):
    """Run the CLI in-process: exit 2, one `netrun: error:` line holding each needle."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    out = res.output
    assert res.exit_code == 2, out
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.startswith("netrun: error:")]
    assert len(lines) == 1, out
    for n in needles:
        assert str(n) in lines[0], lines[0]
    return lines[0]


# -- files ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory):
    """The issue's file: a valid 20000 x 20000 8-bit gray PNG of about 388 KB."""
    p = tmp_path_factory.mktemp("bomb") / "big.png"
    p.write_bytes(png_bytes(20000, 20000))
    return p


@pytest.fixture(scope="module")
def bomb_png1(tmp_path_factory):
    """The same size at 1 bit a pixel: 48 KB, made in 0.1 s (for the other readers)."""
    p = tmp_path_factory.mktemp("bomb1") / "big1.png"
    p.write_bytes(png_bytes(20000, 20000, depth=1))
    return p


@pytest.fixture
def huge_npz(tmp_path):
    """The issue's file: an .npz whose member header declares 100000x100000x10 float32."""
    return write_npz(tmp_path / "big.npz", {"data": npy_header(HUGE_SHAPE) + bytes(1000)})


@pytest.fixture
def huge_npy(tmp_path):
    p = tmp_path / "big.npy"
    p.write_bytes(npy_header(HUGE_SHAPE) + bytes(1000))
    return p


# -- the two cases of the issue, as a user runs them: time and peak memory -----------------------
MEASURE = r"""
import resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(r.returncode, dt, rss)
sys.stdout.write(r.stderr)
"""


def measured(*args):
    """(exit code, seconds, peak RSS in MB, stderr) of `python -m netrun ARGS`, measured
    by a fresh wrapper process whose only child is netrun."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "netrun",
                          *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)
    first, _, err = out.stdout.partition("\n")
    code, seconds, rss_kb = first.split()
    return int(code), float(seconds), int(rss_kb) / 1024, err


FIGURES = {}


@pytest.mark.parametrize("case", ["png", "npz"])
def test_issue_cases_exit_2_fast_and_small(case, bomb_png, huge_npz):
    arg = ["--input", f"data={bomb_png}"] if case == "png" else ["--inputs", huge_npz]
    code, seconds, rss_mb, err = measured("forward", DIGITS, *arg)
    FIGURES[case] = (seconds, rss_mb)
    print(f"{case}: exit {code}, {seconds:.2f} s, peak RSS {rss_mb:.0f} MB")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netrun: error:"), err
    name = bomb_png.name if case == "png" else "big.npz[data]"
    assert name in lines[0]
    assert "blobs do not fit" not in lines[0]
    assert rss_mb < 200, f"peak RSS {rss_mb:.0f} MB"
    assert seconds < 30                  # loose: the issue's 2 s is measured, not asserted


# -- images ---------------------------------------------------------------------------------------
def test_png_bomb_every_net_command(bomb_png1, tmp_path):
    for cmd in ("forward", "backward", "time"):
        fails(cmd, DIGITS, "--input", f"data={bomb_png1}", needles=[bomb_png1.name, "bomb"])


def test_png_beyond_netrun_pixel_limit(tmp_path):
    # 100 Mpx: below Pillow's error (179 Mpx), above its warning (89.5 Mpx): netrun refuses
    p = tmp_path / "mid.png"
    p.write_bytes(png_bytes(10000, 10000, depth=1))
    fails("forward", DIGITS, "--input", f"data={p}", needles=[p.name, "10000x10000 pixels"])


def test_image_within_pixel_limit_but_beyond_max_memory(tmp_path):
    p = tmp_path / "rgb.png"
    p.write_bytes(png_header_only(3000, 3000))          # 9 Mpx x 24 B > 100 MiB
    fails("forward", DIGITS, "--input", f"data={p}", "--max-memory", "100M",
          needles=[p.name, "3000x3000", "--max-memory"])


def test_image_header_checked_before_decoding(tmp_path):
    # the header is read, nothing else: a header-only image is refused from its size
    from netrun.io.images import read_image
    p = tmp_path / "h.png"
    p.write_bytes(png_header_only(12000, 12000))
    with pytest.raises(NetrunError, match="h.png: declares 12000x12000 pixels"):
        read_image(str(p))


def test_pixel_limit_grows_with_the_input():
    from netrun.io.limits import image_pixel_limit
    small = image_pixel_limit(1 << 40, (8, 8))
    big = image_pixel_limit(1 << 40, (2000, 2000))
    assert small == 1024 ** 3 // 4 // 3                 # Pillow's default MAX_IMAGE_PIXELS
    assert big == 64 * 2000 * 2000
    assert image_pixel_limit(24 << 20, (2000, 2000)) == 1 << 20


def test_image_data_layer(tmp_path, bomb_png1):
    (tmp_path / "list.txt").write_text(f"{bomb_png1} 0\n")
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "d" type: "ImageData" top: "data" top: "label" '
                   f'image_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 1 }} }}\n')
    fails("forward", net, needles=[bomb_png1.name, "bomb"])


# -- .npy / .npz ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["forward", "backward", "time", "gradcheck"])
def test_npz_inputs_every_command(cmd, huge_npz):
    fails(cmd, MLP, "--inputs", huge_npz, needles=["big.npz[data]", "372.5 GiB"])


def test_npz_top_diffs(huge_npz):
    fails("backward", MLP, "--top-diffs", huge_npz, needles=["big.npz[data]"])


def test_npz_compare(huge_npz, tmp_path):
    ok = tmp_path / "ok.npz"
    np.savez(ok, data=np.zeros(3, np.float32))
    fails("compare", huge_npz, ok, needles=["big.npz[data]"])
    fails("compare", ok, huge_npz, needles=["big.npz[data]"])


def test_npz_train_and_test(huge_npz, tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{MLP}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\n'
                      f'snapshot_prefix: "{tmp_path / "s"}"\n')
    fails("train", solver, "--inputs", huge_npz, needles=["big.npz[data]"])
    weights = tmp_path / "w.caffemodel"
    Net(str(MLP)).save(str(weights))
    fails("test", MLP, "--weights", weights, "--inputs", huge_npz, needles=["big.npz[data]"])


def test_npy_input(huge_npy):
    fails("forward", DIGITS, "--input", f"data={huge_npy}", needles=["big.npy", "372.5 GiB"])
    fails("backward", MLP, "--top-diff", f"ip2={huge_npy}", needles=["big.npy"])


def test_npy_declares_more_than_it_holds(tmp_path):
    p = tmp_path / "short.npy"
    p.write_bytes(npy_header((1, 1, 8, 8)) + bytes(10))
    fails("forward", DIGITS, "--input", f"data={p}", needles=["short.npy", "holds 10"])


def test_npz_member_declares_more_than_it_holds(tmp_path):
    p = write_npz(tmp_path / "short.npz", {"data": npy_header((1, 1, 8, 8)) + bytes(10)},
                  compress=True)
    fails("forward", DIGITS, "--inputs", p, needles=["short.npz[data]", "holds 10"])


def test_npz_object_member(tmp_path):
    p = write_npz(tmp_path / "obj.npz", {"data": npy_bytes(np.array([{"a": 1}], object))})
    fails("forward", DIGITS, "--inputs", p, needles=["obj.npz[data]", "dtype object"])


def test_npz_huge_header(tmp_path):
    p = write_npz(tmp_path / "hdr.npz", {"data": npy_huge_header_length()})
    fails("forward", DIGITS, "--inputs", p, needles=["hdr.npz[data]", "header declares"])


def test_npy_huge_header(tmp_path):
    p = tmp_path / "hdr.npy"
    p.write_bytes(npy_huge_header_length())
    fails("forward", DIGITS, "--input", f"data={p}", needles=["hdr.npy", "header declares"])


def test_npz_many_members(tmp_path):
    one = npy_bytes(np.zeros(1, np.float32))
    p = write_npz(tmp_path / "many.npz", {f"m{i}": one for i in range(3000)})
    fails("forward", DIGITS, "--inputs", p, "--max-memory", "2M",
          needles=["many.npz", "3000 members"])


def test_npz_members_add_up(tmp_path):
    # each member fits the limit, their sum does not
    p = write_npz(tmp_path / "sum.npz", {f"m{i}": npy_header((1 << 20,)) + bytes(4 << 20)
                                         for i in range(3)}, compress=True)
    from netrun.io.limits import check_npz_file
    with pytest.raises(NetrunError, match=r"sum.npz: its 3 arrays would take 12.0 MiB"):
        check_npz_file(p, limit=10 << 20)


# -- HDF5 -----------------------------------------------------------------------------------------
def _hdf5_net(tmp_path):
    h5py = pytest.importorskip("h5py")
    h5 = tmp_path / "huge.h5"
    with h5py.File(h5, "w") as f:             # nothing written: a tiny file
        f.create_dataset("data", shape=HUGE_SHAPE, dtype="f4", chunks=(1, 100, 10))
    (tmp_path / "list.txt").write_text(f"{h5}\n")
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "d" type: "HDF5Data" top: "data" '
                   f'hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 1 }} }}\n')
    return net


@pytest.mark.parametrize("cmd", ["forward", "summary"])
def test_hdf5_dataset(cmd, tmp_path):
    net = _hdf5_net(tmp_path)
    fails(cmd, net, needles=["huge.h5", 'dataset "data"', str(HUGE_SHAPE)])


def test_hdf5_draw(tmp_path):
    net = _hdf5_net(tmp_path)
    fails("draw", net, tmp_path / "out.dot", needles=["huge.h5", 'dataset "data"'])


# -- LMDB -----------------------------------------------------------------------------------------
def _lmdb_net(tmp_path, datum):
    lmdb = pytest.importorskip("lmdb")
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"00000000", datum.SerializeToString())
    env.close()
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "d" type: "Data" top: "data" top: "label" data_param { '
                   f'source: "{tmp_path / "db"}" batch_size: 1 backend: LMDB }} }}\n')
    return net


def test_lmdb_datum_declares_more_than_it_holds(tmp_path):
    d = caffe_pb2.Datum(channels=1, height=100000, width=100000, data=bytes(10))
    fails("forward", _lmdb_net(tmp_path, d),
          needles=['record "00000000"', "(1, 100000, 100000)", "holds 10"])


def test_lmdb_datum_negative_dims(tmp_path):
    d = caffe_pb2.Datum(channels=-1, height=-1, width=1, data=bytes(1))
    fails("forward", _lmdb_net(tmp_path, d), needles=['record "00000000"', "positive"])


def test_lmdb_encoded_bomb(tmp_path, bomb_png1):
    d = caffe_pb2.Datum(encoded=True, data=bomb_png1.read_bytes())
    fails("forward", _lmdb_net(tmp_path, d), needles=['record "00000000"', "bomb"])


def test_lmdb_record_beyond_max_memory(tmp_path):
    d = caffe_pb2.Datum(channels=1, height=1000, width=1000, data=bytes(1000000))
    fails("forward", _lmdb_net(tmp_path, d), "--max-memory", "512K",
          needles=['record "00000000"', "--max-memory"])


# -- protobuf files: caffemodel, mean file, solverstate, prototxt --------------------------------
def test_caffemodel_bigger_than_the_limit(tmp_path):
    w = sparse_file(tmp_path / "huge.caffemodel")
    if w is None:
        pytest.skip("no sparse files here")
    fails("forward", MLP, "--weights", w, needles=["huge.caffemodel", "NetParameter"])
    fails("gradcheck", MLP, "--weights", w, needles=["huge.caffemodel"])
    fails("upgrade", w, tmp_path / "out.caffemodel", needles=["huge.caffemodel"])


def test_caffemodel_blob_declares_huge_shape(tmp_path):
    p = caffe_pb2.NetParameter()
    lp = p.layer.add(name="ip1", type="InnerProduct")
    lp.blobs.add().shape.dim.extend(HUGE_SHAPE)
    lp.blobs.add().shape.dim.extend([16])
    w = tmp_path / "w.caffemodel"
    w.write_bytes(p.SerializeToString())
    fails("forward", MLP, "--weights", w, needles=["w.caffemodel", 'layer "ip1"'])


def test_blob_array_checks_before_building():
    from netrun.io.blobproto import blob_array
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend(HUGE_SHAPE)
    with pytest.raises(NetrunError, match="holds 0 values"):
        blob_array(bp)
    bp = caffe_pb2.BlobProto(data=[1.0])
    bp.shape.dim.extend([-1, -1])
    with pytest.raises(NetrunError, match="negative"):
        blob_array(bp)
    bp = caffe_pb2.BlobProto(data=[0.0] * 1000)
    with pytest.raises(NetrunError, match="more than the memory limit"):
        blob_array(bp, np.float64, (1000,), limit=4000)


def test_mean_file_declares_huge_blob(tmp_path):
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend((1, 1) + HUGE_SHAPE[:2])
    m = tmp_path / "mean.binaryproto"
    m.write_bytes(bp.SerializeToString())
    img = tmp_path / "x.png"
    img.write_bytes(png_bytes(8, 8))
    fails("forward", DIGITS, "--input", f"data={img}", "--mean-file", m,
          needles=["mean.binaryproto (--mean-file)", "100000"])
    big = sparse_file(tmp_path / "huge.binaryproto")
    if big is not None:
        fails("forward", DIGITS, "--input", f"data={img}", "--mean-file", big,
              needles=["huge.binaryproto (--mean-file)", "BlobProto"])


def test_mean_file_npy(tmp_path, huge_npy):
    img = tmp_path / "x.png"
    img.write_bytes(png_bytes(8, 8))
    fails("forward", DIGITS, "--input", f"data={img}", "--mean-file", huge_npy,
          needles=["big.npy (--mean-file)", "372.5 GiB"])


def test_solverstate(tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{MLP}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\n'
                      f'snapshot_prefix: "{tmp_path / "s"}"\n')
    big = sparse_file(tmp_path / "huge.solverstate")
    if big is not None:
        fails("train", solver, "--snapshot", big, needles=["huge.solverstate", "SolverState"])
    state = caffe_pb2.SolverState(iter=1)
    for shape in ((16, 10), (16,), (3, 16), (3,)):
        state.history.add().shape.dim.extend(shape)
    state.history[0].shape.dim[0] = 100000          # declares (100000, 10), holds nothing
    p = tmp_path / "h.solverstate"
    p.write_bytes(state.SerializeToString())
    fails("train", solver, "--snapshot", p, needles=["h.solverstate", "history blob 0"])


def test_prototxt_bigger_than_the_limit(tmp_path):
    p = sparse_file(tmp_path / "huge.prototxt")
    if p is None:
        pytest.skip("no sparse files here")
    for cmd in (("summary", p), ("draw", p, tmp_path / "o.dot"), ("forward", p),
                ("upgrade", p, tmp_path / "o.prototxt")):
        fails(*cmd, needles=["huge.prototxt", "text file"])


def test_caffemodel_of_empty_messages(tmp_path):
    # 3 bytes on disk per empty layer, some 530 bytes once parsed: refused before parsing
    w = tmp_path / "empty.caffemodel"
    w.write_bytes(b"\xa2\x06\x00" * 200000)                  # 600 KB -> about 105 MB
    fails("forward", MLP, "--weights", w, "--max-memory", "64M",
          needles=["empty.caffemodel", "parsing its 600000 bytes as a NetParameter"])


def test_protobuf_cost_of_real_files_is_their_size():
    from netrun.io.limits import protobuf_cost
    raw = (MODELS / "digits" / "digits.caffemodel").read_bytes()
    cost = protobuf_cost(raw, caffe_pb2.NetParameter.DESCRIPTOR)
    assert len(raw) <= cost <= 1.2 * len(raw) + 65536


def test_npz_damaged_deflate_stream(tmp_path):
    # found by the fuzzer: a deflated member whose stream is invalid (zlib.error)
    p = tmp_path / "bad.npz"
    p.write_bytes(
        b'PK\x03\x04\x14\x00\x00\x00\x08\x00\xd4\x0b\x82] \\\x9f\xadF\x00\x00\x00\x84\x00'
        b'\x00\x00\x08\x00\x00\x00data.npy\x9b\xec\x17\xea\x1b\x10\xc9\xc8P\xc6'
        b'P\xad\x9e\x92Z\x9c\\\xa4n\xa5\xa0n\x93f\xa2\xae\xa3\xa0\x9e\x96_TR\x94'
        b'\x98\x00\x9f_\x94\x92\n\x12wK\xcc)N\x05\x8a\x17g$\x16\xa4\x02\xf9\x1a\x9a'
        b':\n\xb5\n\x14\x01.\x06\x86\x06{\x00PK\x01\x02\x14\x03\x14\x00\x00\x00\x08\x00'
        b'\xd4\x0b\x82] \\\x9f\xadF\x00\x00\x00\x84\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00'
        b'\x00\x00\x00\x00\x80\x01\x00\x00\x00\x00data.npyPK\x05\x06\x00\x00'
        b'\x00\x00\x01\x00\x01\x006\x00\x00\x00l\x00\x00\x00\x00\x00')
    fails("forward", DIGITS, "--inputs", p, needles=["bad.npz[data]"])


def test_list_and_label_files_bigger_than_the_limit(tmp_path):
    big = sparse_file(tmp_path / "huge.txt")
    if big is None:
        pytest.skip("no sparse files here")
    net = tmp_path / "net.prototxt"
    net.write_text('layer { name: "d" type: "ImageData" top: "data" top: "label" '
                   f'image_data_param {{ source: "{big}" batch_size: 1 }} }}\n')
    fails("forward", net, needles=["huge.txt", "text file"])
    fails("forward", DIGITS, "--labels", big, needles=["huge.txt (--labels)"])


def test_npz_zip_version_not_supported(tmp_path):
    # found by the fuzzer: zipfile raises NotImplementedError for an unknown zip version
    p = tmp_path / "v64.npz"
    np.savez(p, data=np.zeros((1, 1, 8, 8), np.float32))
    raw = bytearray(p.read_bytes())
    i = raw.find(b"PK\x01\x02")
    raw[i + 6] = 64                                  # "version needed to extract": 6.4
    p.write_bytes(bytes(raw))
    fails("forward", DIGITS, "--inputs", p, needles=["v64.npz", "version 6.4"])


# -- the commands of this round: export, extract, pycaffe ----------------------------------------
def test_pycaffe_load_hdf5_checks_the_declared_shape(tmp_path):
    """pycaffe's Net.load_hdf5 compares each dataset's declared shape with the parameter
    before reading it: a tiny file declaring 372 GiB is refused, naming the file."""
    h5py = pytest.importorskip("h5py")
    from netrun.pycaffe import Net as CaffeNet
    net = CaffeNet(str(MLP), 0)                   # pycaffe's TRAIN phase
    name = next(n for n, blobs in net.params.items() if blobs)
    h5 = tmp_path / "w.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset(f"data/{name}/0", shape=HUGE_SHAPE, dtype="f4", chunks=(1, 100, 10))
    with pytest.raises(NetrunError, match=r"w\.h5.*parameter 0 has shape \(100000, 100000, 10\)"):
        net.load_hdf5(str(h5))


def test_export_reads_weights_through_the_checks(tmp_path):
    """`netrun export` reads the caffemodel with the same checks as every command."""
    bad = tmp_path / "w.caffemodel"
    if sparse_file(bad, 1 << 40) is None:         # a 1 TiB file that takes no disk
        pytest.skip("this file system refuses sparse files")
    fails("export", DIGITS, "--weights", bad, "-o", tmp_path / "m.onnx", needles=["w.caffemodel"])
    assert not (tmp_path / "m.onnx").exists()


def test_extract_refuses_a_bomb_image_naming_it(tmp_path, bomb_png1):
    pytest.importorskip("zarr")
    data = tmp_path / "images"
    data.mkdir()
    (data / "bomb.png").write_bytes(Path(bomb_png1).read_bytes())
    fails("extract", DIGITS, "--data", data, "--out", tmp_path / "f.zarr",
          needles=["bomb.png"])
