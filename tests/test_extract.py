"""`netrun extract`: a model over a dataset, local or on Dask, resumable, fault-tolerant.

The model is the bundled digits LeNet (8x8 gray input); the data are 2,000
generated 12x12 gray PNGs (so the resize path runs too).  Every comparison is
exact (``np.array_equal``): an item's rows are a pure function of its pixels and
the batch size (a GEMM of another height may round differently, so extract pads
its last batch to the batch size and the comparisons use the same batch size) --
and of the BLAS thread count: on some BLAS kernels (OpenBLAS's Haswell one, for one)
a GEMM split between 2 threads rounds some elements differently than on 1.  Dask's
local workers run 1 BLAS thread each, so every run here does: the in-process runs
under threadpoolctl's limit, the CLI runs with OPENBLAS_NUM_THREADS=1.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

zarr = pytest.importorskip("zarr", reason="netrun extract's tests need zarr (pip install "
                                          "'netrun[dask]')")
distributed = pytest.importorskip("distributed", reason="netrun extract's tests need "
                                                        "dask.distributed (pip install 'netrun[dask]')")
PIL = pytest.importorskip("PIL", reason="the generated images need Pillow")
threadpoolctl = pytest.importorskip("threadpoolctl", reason="pinning the BLAS threads needs "
                                                            "threadpoolctl (the test extra)")

import netrun  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "digits", "digits_deploy.prototxt")
WEIGHTS = os.path.join(ROOT, "models", "digits", "digits.caffemodel")
N = 2000
BATCH = 32
CHUNKS = -(-N // BATCH)
BLOBS = ["ip1", "prob"]
OPTS = dict(weights=WEIGHTS, blobs=BLOBS, batch_size=BATCH, raw_scale=1.0, progress=False)


ONE_BLAS_THREAD = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                   "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """Every in-process run of this module with 1 BLAS thread, as the Dask workers."""
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "netrun", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=ONE_BLAS_THREAD, **kw)


def arrays(path, names=("ip1", "prob")):
    g = zarr.open_group(path, mode="r")
    return {n: np.asarray(g[n][:]) for n in names}


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    from PIL import Image
    d = tmp_path_factory.mktemp("extract") / "imgs"
    d.mkdir()
    rng = np.random.default_rng(15)
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(d / f"im_{i:05d}.png")
    return d


@pytest.fixture(scope="module")
def reference(one_blas_thread, images, tmp_path_factory):
    """The local engine's store over the 2,000 images."""
    out = tmp_path_factory.mktemp("extract") / "ref.zarr"
    report = {}
    assert netrun.extract(MODEL, str(images), str(out), report=report, **OPTS) == str(out)
    assert report["chunks_computed"] == CHUNKS and report["items"] == N
    return out, arrays(out)


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster of 2 worker processes, as `--scheduler local:2` starts it."""
    from netrun.extraction.engines import _cluster
    client, cluster = _cluster("local:2")
    client.close()
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="session")
def small(images, tmp_path_factory):
    """The first 40 images, the digits input's (1, 8, 8) arrays and the pixels."""
    from netrun.io.images import read_image, resize_linear
    d = tmp_path_factory.mktemp("extract") / "small"
    d.mkdir()
    names = sorted(os.listdir(images))[:40]
    u8 = []
    for n in names:
        shutil.copy(images / n, d / n)
        u8.append(read_image(str(images / n), color=False))
    u8 = np.stack(u8)                                              # (40, 12, 12, 1)
    x = np.stack([resize_linear(a, 8, 8) for a in u8]).transpose(0, 3, 1, 2)
    return d, names, u8, (x / 255.0).astype(np.float32)


def test_local_store_layout(reference, images):
    out, ref = reference
    g = zarr.open_group(str(out), mode="r")
    meta = g.attrs["netrun"]
    assert meta["complete"] is True and meta["items"] == N and meta["skipped"] == []
    assert meta["blobs"] == {"ip1": [64], "prob": [10]}
    assert meta["netrun_version"] == netrun.__version__
    import hashlib
    assert meta["weights_sha256"] == hashlib.sha256(open(WEIGHTS, "rb").read()).hexdigest()
    assert list(g["keys"][:3]) == ["im_00000.png", "im_00001.png", "im_00002.png"]
    assert np.asarray(g["_done"][:]).tolist() == [1] * CHUNKS
    assert g["ip1"].chunks == (BATCH, 64)
    assert ref["prob"].shape == (N, 10)
    np.testing.assert_allclose(ref["prob"].sum(1), 1, rtol=1e-5)


def test_matches_forward_api(reference, images):
    """Item by item, the rows are what Net.forward gives for the same batch."""
    from netrun.io.images import load_images
    _, ref = reference
    net = netrun.Net(MODEL, WEIGHTS, netrun.TEST, input_shapes={"data": (BATCH, 1, 8, 8)})
    paths = [str(images / f"im_{i:05d}.png") for i in range(N)]
    for c in (0, 17, CHUNKS - 1):
        lo = c * BATCH
        part = paths[lo:lo + BATCH]
        x = np.zeros((BATCH, 1, 8, 8), np.float32)
        x[:len(part)] = load_images(net, "data", part, {"raw_scale": 1.0})
        res = net.forward(blobs=BLOBS, data=x)
        for b in BLOBS:
            assert np.array_equal(ref[b][lo:lo + len(part)], res[b][:len(part)]), (b, c)


def test_matches_forward_cli(reference, images, tmp_path):
    _, ref = reference
    lo = 5 * BATCH
    ins = [a for i in range(lo, lo + BATCH) for a in ("--input", f"data={images}/im_{i:05d}.png")]
    r = cli("forward", MODEL, "-w", WEIGHTS, "--raw-scale", "1", "-q", "--save",
            str(tmp_path / "f.npz"), *ins)
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "f.npz") as z:
        for b in BLOBS:
            assert np.array_equal(z[f"data/{b}"], ref[b][lo:lo + BATCH])


def test_dask_local2_identical_to_local(reference, images, cluster, tmp_path):
    _, ref = reference
    report = {}
    out = tmp_path / "dask.zarr"
    netrun.extract(MODEL, str(images), str(out), engine="dask", scheduler=cluster, report=report,
                   **OPTS)
    assert report["chunks_computed"] == CHUNKS
    got = arrays(out)
    for b in BLOBS:
        assert np.array_equal(got[b], ref[b]), b
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["netrun"]["complete"] is True
    assert np.array_equal(g["keys"][:], zarr.open_group(str(reference[0]), mode="r")["keys"][:])


def test_worker_killed_mid_chunk(reference, images, cluster, tmp_path):
    """A worker process dies after writing a chunk's rows, before its completion record:
    Dask runs the chunk again elsewhere and the store is complete and identical."""
    _, ref = reference
    marker = tmp_path / "died"
    out = tmp_path / "faulty.zarr"
    report = {}
    netrun.extract(MODEL, str(images), str(out), engine="dask", scheduler=cluster,
                   report=report, _fault={"chunk": 7, "marker": str(marker)}, **OPTS)
    assert marker.exists()                        # the worker did die
    got = arrays(out)
    for b in BLOBS:
        assert np.array_equal(got[b], ref[b]), b
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["netrun"]["complete"] is True
    assert np.asarray(g["_done"][:]).all()


def test_sigkill_then_resume(reference, images, tmp_path):
    _, ref = reference
    out = tmp_path / "killed.zarr"
    args = [sys.executable, "-m", "netrun", "extract", MODEL, "-w", WEIGHTS, "--data", str(images),
            "--out", str(out), "--blobs", "ip1,prob", "--batch-size", str(BATCH),
            "--raw-scale", "1"]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=ONE_BLAS_THREAD)
    done_dir = out / "_done" / "c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if done_dir.is_dir() and len(os.listdir(done_dir)) >= 3:
            break
        time.sleep(0.005)
    assert p.poll() is None, "the run ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    g = zarr.open_group(str(out), mode="r")
    done = int(np.asarray(g["_done"][:]).sum())
    # the kill may land while a chunk's marker is being written: that one reads as not
    # done (and is computed again on resume), so of the 3 files seen at least 1 counts
    assert 1 <= done < CHUNKS and g.attrs["netrun"]["complete"] is False
    again = cli("extract", *args[4:], "--json")
    assert again.returncode == 2 and "--resume" in again.stderr     # no silent overwrite
    r = cli("extract", *args[4:], "--resume", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["chunks_computed"] == CHUNKS - done and rep["chunks_resumed"] == done
    got = arrays(out)
    for b in BLOBS:
        assert np.array_equal(got[b], ref[b]), b
    assert zarr.open_group(str(out), mode="r").attrs["netrun"]["complete"] is True


@pytest.fixture(scope="module")
def with_bad(small, tmp_path_factory):
    d = tmp_path_factory.mktemp("extract") / "bad"
    shutil.copytree(small[0], d)
    (d / "im_00020b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return d


def test_corrupt_image_stops_with_exit_2(with_bad, tmp_path):
    out = tmp_path / "o.zarr"
    r = cli("extract", MODEL, "-w", WEIGHTS, "--data", str(with_bad), "--out", str(out),
            "--batch-size", "8", "--raw-scale", "1")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netrun: error: im_00020b.png (item 21 of ")
    assert "cannot decode image" in lines[0]
    assert "Traceback" not in r.stderr


def test_skip_bad_records_the_item(with_bad, reference, tmp_path):
    _, ref = reference
    out = tmp_path / "o.zarr"
    r = cli("extract", MODEL, "-w", WEIGHTS, "--data", str(with_bad), "--out", str(out),
            "--batch-size", str(BATCH), "--raw-scale", "1", "--blobs", "ip1,prob", "--skip-bad",
            "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert [(s["index"], s["key"]) for s in rep["skipped"]] == [(21, "im_00020b.png")]
    g = zarr.open_group(str(out), mode="r")
    meta = g.attrs["netrun"]
    assert meta["complete"] is True and meta["skipped"][0]["key"] == "im_00020b.png"
    assert "cannot decode image" in meta["skipped"][0]["reason"]
    assert np.asarray(g["_skipped"][:]).nonzero()[0].tolist() == [21]
    got = arrays(out)
    for b in BLOBS:
        assert not got[b][21].any()                            # the skipped row is zeros
        # the items before it sit where they sat in the reference's batch: the same bits;
        # those after it moved one row down their batch, and on some BLAS kernels a GEMM
        # row's last bit depends on where in the block it falls: float32 rounding apart
        assert np.array_equal(got[b][:21], ref[b][:21]), b
        np.testing.assert_allclose(got[b][22:41], ref[b][21:40], rtol=1e-5, atol=1e-6,
                                   err_msg=b)


def _check_rows(out, ref, n=40, h5=False):
    if h5:
        import h5py
        with h5py.File(out, "r") as f:
            got = {b: f[b][()] for b in BLOBS}
            assert json.loads(f.attrs["netrun"])["complete"] is True
    else:
        got = arrays(out)
    for b in BLOBS:
        assert np.array_equal(got[b], ref[b][:n]), b


def test_other_sources_give_the_same_rows(small, reference, tmp_path):
    """.npy, HDF5 (file and list), ImageData list and LMDB of Datums; HDF5 output."""
    h5py = pytest.importorskip("h5py", reason="HDF5 sources need h5py")
    lmdb = pytest.importorskip("lmdb", reason="LMDB sources need lmdb")
    d, names, u8, x = small
    _, ref = reference
    np.save(tmp_path / "x.npy", x)
    with pytest.warns(netrun.NetrunWarning, match="--raw-scale: ignored .* arrays are fed as"):
        netrun.extract(MODEL, str(tmp_path / "x.npy"), str(tmp_path / "npy.zarr"), **OPTS)
    _check_rows(tmp_path / "npy.zarr", ref)
    assert list(zarr.open_group(str(tmp_path / "npy.zarr"), mode="r")["keys"][:2]) == ["0", "1"]

    for part, rows in (("a.h5", x[:25]), ("b.h5", x[25:])):
        with h5py.File(tmp_path / part, "w") as f:
            f["data"] = rows
    (tmp_path / "h5list.txt").write_text("a.h5\nb.h5\n")
    netrun.extract(MODEL, str(tmp_path / "h5list.txt"), str(tmp_path / "h5.h5"),
                   **{**OPTS, "raw_scale": None})
    _check_rows(tmp_path / "h5.h5", ref, h5=True)

    listing = d.parent / "list.txt"          # paths relative to the list's folder, as Caffe's
    listing.write_text("".join(f"{d.name}/{n} {i % 10}\n" for i, n in enumerate(names)))
    netrun.extract(MODEL, str(listing), str(tmp_path / "list.zarr"), **OPTS)
    _check_rows(tmp_path / "list.zarr", ref)
    assert np.asarray(zarr.open_group(str(tmp_path / "list.zarr"), mode="r")["labels"][:12]).tolist() \
        == [i % 10 for i in range(12)]

    from netrun.proto import caffe_pb2
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, img in enumerate(u8):
            dt = caffe_pb2.Datum(channels=1, height=12, width=12, data=img[..., 0].tobytes(),
                                 label=i % 10)
            txn.put(f"{i:08d}_{names[i]}".encode(), dt.SerializeToString())
    env.close()
    netrun.extract(MODEL, str(tmp_path / "db"), str(tmp_path / "db.zarr"), **OPTS)
    _check_rows(tmp_path / "db.zarr", ref)
    assert zarr.open_group(str(tmp_path / "db.zarr"), mode="r")["keys"][0] == f"00000000_{names[0]}"


def test_cli_local2_and_hdf5_out(small, reference, tmp_path):
    """The issue's command: --engine dask --scheduler local:2, here into an .h5 file
    (the client writes the chunks the tasks return)."""
    d = small[0]
    out = tmp_path / "f.h5"
    r = cli("extract", MODEL, "-w", WEIGHTS, "--data", str(d), "--out", str(out), "--blobs",
            "ip1,prob", "--batch-size", str(BATCH), "--raw-scale", "1", "--engine", "dask",
            "--scheduler", "local:2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["chunks_computed"] == 2
    _check_rows(out, reference[1], h5=True)


def test_resume_refuses_another_run(small, tmp_path):
    out = tmp_path / "o.zarr"
    netrun.extract(MODEL, str(small[0]), str(out), **OPTS)
    with pytest.raises(netrun.NetrunError, match="blobs differs"):
        netrun.extract(MODEL, str(small[0]), str(out), resume=True,
                       **{**OPTS, "blobs": ["prob"]})
    rep = {}
    netrun.extract(MODEL, str(small[0]), str(out), resume=True, report=rep, **OPTS)
    assert rep["chunks_computed"] == 0 and rep["chunks_resumed"] == 2


def test_user_errors(small, tmp_path):
    r = cli("extract", MODEL, "--data", str(small[0]), "--out", str(tmp_path / "o.zarr"),
            "--blobs", "nope")
    assert r.returncode == 2 and 'no blob named "nope"' in r.stderr
    r = cli("extract", MODEL, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o.zarr"))
    assert r.returncode == 2 and "missing (--data): no such file or directory" in r.stderr
    r = cli("extract", MODEL, "--data", str(small[0]), "--out", str(tmp_path / "o.zarr"),
            "--batch-size", "8", "--chunk-size", "12")
    assert r.returncode == 2 and "multiple of --batch-size" in r.stderr


def test_core_import_does_not_load_dask_or_zarr():
    r = subprocess.run([sys.executable, "-c", "import sys, netrun, netrun.cli; "
                        "print(sorted(m for m in ('zarr', 'dask', 'distributed') if m in sys.modules))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[]", r.stderr


def test_bad_item_on_dask_names_it(with_bad, cluster, tmp_path):
    with pytest.raises(netrun.NetrunError, match=r"^im_00020b\.png \(item 21 of .*cannot decode"):
        netrun.extract(MODEL, str(with_bad), str(tmp_path / "o.zarr"), engine="dask",
                       scheduler=cluster, **{**OPTS, "batch_size": 8})
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert g.attrs["netrun"]["complete"] is False


def test_fsspec_url_store(small, reference, cluster, tmp_path):
    """--out as an fsspec URL (file:// here; s3:// etc. take the same path), written by
    the Dask workers."""
    url = "file://" + str(tmp_path / "u.zarr")
    rep = {}
    assert netrun.extract(MODEL, str(small[0]), url, engine="dask", scheduler=cluster,
                          report=rep, **OPTS) == url
    _check_rows(tmp_path / "u.zarr", reference[1])


def test_progress_bar_on_request(small, tmp_path, capfd):
    netrun.extract(MODEL, str(small[0]), str(tmp_path / "o.zarr"),
                   **{**OPTS, "progress": True, "batch_size": 8})
    err = capfd.readouterr().err
    assert "netrun extract: 40/40 items" in err and "items/s" in err and "ETA" in err
