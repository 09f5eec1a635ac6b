"""Data layers (Data/LMDB, HDF5Data, HDF5Output, ImageData, MemoryData, Python),
data layers replaced by inputs, and image inputs, on tiny files made in tmp_path."""
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from netrun import Net, NetrunError
from netrun.cli import main
from netrun.io.images import fit_mean, load_images, read_image, read_labels, resize_linear
from netrun.proto import caffe_pb2

lmdb = pytest.importorskip("lmdb")
h5py = pytest.importorskip("h5py")
Image = pytest.importorskip("PIL.Image")


def write(path, text):
    path.write_text(text)
    return path


def run(*args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


# -- LMDB ------------------------------------------------------------------------------------------
def make_lmdb(path, items, labels, float_data=False, encoded=None):
    env = lmdb.open(str(path), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i, (x, lab) in enumerate(zip(items, labels)):
            d = caffe_pb2.Datum(label=int(lab))
            if encoded is not None:
                d.encoded = True
                d.data = encoded[i]
            else:
                d.channels, d.height, d.width = x.shape
                if float_data:
                    d.float_data.extend(x.ravel().tolist())
                else:
                    d.data = x.astype(np.uint8).tobytes()
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()


def data_net(tmp_path, transform="", batch=2, tops=("data", "label")):
    tops_txt = "".join(f' top: "{t}"' for t in tops)
    return write(tmp_path / "net.prototxt", f'''
layer {{ name: "d" type: "Data"{tops_txt}
  data_param {{ source: "db" batch_size: {batch} backend: LMDB }}
  transform_param {{ {transform} }} }}''')


@pytest.fixture
def items():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(2, 4, 5)).astype(np.uint8) for _ in range(3)]


def test_lmdb_mean_value_scale_center_crop_and_wraparound(tmp_path, items):
    make_lmdb(tmp_path / "db", items, [7, 8, 9])
    net = Net(data_net(tmp_path, "scale: 0.5 mean_value: 10 mean_value: 20 crop_size: 3"),
              phase="test")
    assert net.blobs["data"].shape == (2, 2, 3, 3) and net.blobs["label"].shape == (2,)
    mean = np.array([10, 20], np.float32).reshape(2, 1, 1)

    def expect(x):   # TEST: center crop at ((4-3)//2, (5-3)//2) = (0, 1)
        return ((x.astype(np.float32) - mean) * np.float32(0.5))[:, 0:3, 1:4]
    out = net.forward()
    np.testing.assert_array_equal(out["data"], np.stack([expect(items[0]), expect(items[1])]))
    np.testing.assert_array_equal(out["label"], [7, 8])
    out = net.forward()                                   # item 2, then back to item 0
    np.testing.assert_array_equal(out["data"], np.stack([expect(items[2]), expect(items[0])]))
    np.testing.assert_array_equal(out["label"], [9, 7])


def test_lmdb_float_data_and_mean_file(tmp_path, items):
    xs = [x.astype(np.float32) / 7 for x in items]
    make_lmdb(tmp_path / "db", xs, [0, 1, 2], float_data=True)
    mean = np.arange(40, dtype=np.float32).reshape(1, 2, 4, 5) / 3
    bp = caffe_pb2.BlobProto(num=1, channels=2, height=4, width=5)
    bp.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(bp.SerializeToString())
    net = Net(data_net(tmp_path, 'scale: 2 mean_file: "mean.binaryproto"', batch=3), phase="test")
    out = net.forward()
    want = (np.stack(xs) - mean) * np.float32(2)
    np.testing.assert_allclose(out["data"], want, rtol=1e-6)
    # a mean of another size is refused, naming both shapes
    bad = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=5)
    bad.data.extend([0.0] * 30)
    (tmp_path / "mean.binaryproto").write_bytes(bad.SerializeToString())
    with pytest.raises(NetrunError, match=r"\(2, 3, 5\).*\(2, 4, 5\)"):
        Net(data_net(tmp_path, 'mean_file: "mean.binaryproto"'), phase="test").forward()


def test_lmdb_train_random_crop_and_mirror(tmp_path, items):
    make_lmdb(tmp_path / "db", items, [0, 1, 2])
    net = Net(data_net(tmp_path, "crop_size: 3 mirror: true", batch=3), phase="train", seed=3)
    seen_offsets, seen_flips = set(), set()
    for _ in range(8):
        out = net.forward()["data"]
        for i in range(3):
            x = items[i].astype(np.float32)
            hits = [(h, w, f) for h in range(2) for w in range(3) for f in (0, 1)
                    if np.array_equal(out[i], (x[:, h:h + 3, w:w + 3])[..., ::-1] if f
                                      else x[:, h:h + 3, w:w + 3])]
            assert hits, "item is not a crop of its record"
            seen_offsets.add(hits[0][:2])
            seen_flips.add(hits[0][2])
    assert len(seen_offsets) > 2 and seen_flips == {0, 1}


def test_lmdb_mirror_is_random_in_test_phase_too(tmp_path, items):
    # Caffe draws Rand(2) for mirror whatever the phase; only the crop is centered in TEST
    make_lmdb(tmp_path / "db", items[:1], [0])
    net = Net(data_net(tmp_path, "mirror: true", batch=8), phase="test", seed=0)
    out = net.forward()["data"]
    x = items[0].astype(np.float32)
    flips = [bool(np.array_equal(o, x[..., ::-1])) for o in out]
    assert all(np.array_equal(o, x) or f for o, f in zip(out, flips))
    assert any(flips) and not all(flips)


def test_lmdb_encoded_png_datum_decodes_bgr(tmp_path):
    import io
    rgb = np.random.default_rng(0).integers(0, 256, size=(4, 5, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    make_lmdb(tmp_path / "db", [None], [4], encoded=[buf.getvalue()])
    net = Net(data_net(tmp_path, "", batch=1), phase="test")
    out = net.forward()
    np.testing.assert_array_equal(out["data"][0], rgb[..., ::-1].transpose(2, 0, 1))
    assert out["label"][0] == 4


def test_data_layer_errors(tmp_path, items, monkeypatch):
    with pytest.raises(NetrunError, match=r'data_param.source "db" not found.*--input-shape'):
        Net(data_net(tmp_path), phase="test")
    make_lmdb(tmp_path / "db", items, [0, 1, 2])
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(NetrunError, match=r"needs lmdb: pip install netrun\[lmdb\]"):
        Net(data_net(tmp_path), phase="test")


# -- HDF5 ------------------------------------------------------------------------------------------
def hdf5_net(tmp_path, files, batch=2, shuffle=False):
    for name, (data, label) in files.items():
        with h5py.File(tmp_path / name, "w") as f:
            f["data"] = data
            f["label"] = label
    write(tmp_path / "list.txt", "\n".join(files) + "\n")
    return write(tmp_path / "net.prototxt", f'''
layer {{ name: "h" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param {{ source: "list.txt" batch_size: {batch} shuffle: {str(shuffle).lower()} }} }}''')


def test_hdf5_rows_in_order_across_files_and_wraparound(tmp_path):
    a = np.arange(15, dtype=np.float64).reshape(5, 3)
    b = 100 + np.arange(6, dtype=np.float64).reshape(2, 3)
    net = Net(hdf5_net(tmp_path, {"a.h5": (a, np.arange(5)), "b.h5": (b, np.array([50, 51]))}))
    assert net.blobs["data"].shape == (2, 3) and net.blobs["label"].shape == (2,)
    rows = np.concatenate([a, b])
    labels = np.array([0, 1, 2, 3, 4, 50, 51])
    order = [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]
    for k in range(5):
        out = net.forward()
        np.testing.assert_array_equal(out["data"], rows[order[2 * k:2 * k + 2]])
        np.testing.assert_array_equal(out["label"], labels[order[2 * k:2 * k + 2]])
        assert out["data"].dtype == np.float32


def test_hdf5_shuffle_covers_each_row_once_per_pass(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(6, 2)
    net = Net(hdf5_net(tmp_path, {"a.h5": (a, np.arange(6))}, batch=3, shuffle=True), seed=5)
    labels = np.concatenate([net.forward()["label"].copy() for _ in range(4)])
    assert sorted(labels[:6]) == list(range(6)) and sorted(labels[6:]) == list(range(6))
    assert list(labels[:6]) != list(range(6)) or list(labels[6:]) != list(range(6))


def test_hdf5_errors(tmp_path, monkeypatch):
    proto = hdf5_net(tmp_path, {"a.h5": (np.zeros((3, 2)), np.zeros(4))})
    with pytest.raises(NetrunError, match="differ in rows"):
        Net(proto)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = np.zeros((3, 2))
    with pytest.raises(NetrunError, match=r'no dataset "label" \(datasets: data\)'):
        Net(proto)
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(NetrunError, match=r"HDF5Data needs h5py: pip install netrun\[hdf5\]"):
        Net(proto)


def test_hdf5_output_writes_both_bottoms(tmp_path):
    out_file = tmp_path / "out.h5"
    proto = write(tmp_path / "net.prototxt", f'''
layer {{ name: "in" type: "Input" top: "x" top: "y"
  input_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 }} }} }}
layer {{ name: "out" type: "HDF5Output" bottom: "x" bottom: "y"
  hdf5_output_param {{ file_name: "{out_file}" }} }}''')
    net = Net(proto)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.forward(x=x, y=np.array([4, 5], np.float32))
    with h5py.File(out_file, "r") as f:
        np.testing.assert_array_equal(f["data"][()], x.reshape(2, 3, 1, 1))
        np.testing.assert_array_equal(f["label"][()], np.array([4, 5]).reshape(2, 1, 1, 1))


# -- ImageData -------------------------------------------------------------------------------------
def save_png(path, rgb):
    Image.fromarray(rgb).save(path)
    return rgb


def test_image_data_bgr_labels_root_folder_and_resize(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "imgs").mkdir()
    a = save_png(tmp_path / "imgs" / "a b.png", rng.integers(0, 256, (4, 6, 3)).astype(np.uint8))
    b = save_png(tmp_path / "imgs" / "b.png", rng.integers(0, 256, (4, 6, 3)).astype(np.uint8))
    write(tmp_path / "list.txt", "a b.png 3\nb.png 5\n\n")

    def net_for(extra, mean="mean_value: 1 mean_value: 2 mean_value: 3"):
        return Net(write(tmp_path / "net.prototxt", f'''
layer {{ name: "d" type: "ImageData" top: "data" top: "label"
  image_data_param {{ source: "list.txt" root_folder: "imgs/" batch_size: 3 {extra} }}
  transform_param {{ {mean} }} }}'''), phase="test")
    net = net_for("")
    out = net.forward()
    bgr = lambda rgb: rgb[..., ::-1].transpose(2, 0, 1).astype(np.float32)
    mean = np.array([1, 2, 3], np.float32).reshape(3, 1, 1)
    np.testing.assert_array_equal(out["data"], np.stack([bgr(a), bgr(b), bgr(a)]) - mean)
    np.testing.assert_array_equal(out["label"], [3, 5, 3])
    # halving: OpenCV's INTER_LINEAR averages each 2x2 block, rounding (sum + 2) >> 2
    out = net_for("new_height: 2 new_width: 3").forward()
    blocks = a.astype(np.int64).reshape(2, 2, 3, 2, 3).sum(axis=(1, 3))
    np.testing.assert_array_equal(out["data"][0], bgr((blocks + 2) >> 2) - mean)
    # gray: OpenCV's weights
    out = net_for("is_color: false", "mean_value: 1").forward()
    r, g, bb = (a[..., i].astype(np.int64) for i in range(3))
    gray = (r * 4899 + g * 9617 + bb * 1868 + 8192) >> 14
    np.testing.assert_array_equal(out["data"][0, 0], gray - 1)


def test_image_data_bad_list_line(tmp_path):
    write(tmp_path / "list.txt", "a.png\n")
    proto = write(tmp_path / "net.prototxt", '''
layer { name: "d" type: "ImageData" top: "data" top: "label"
  image_data_param { source: "list.txt" batch_size: 1 } }''')
    with pytest.raises(NetrunError, match=r'list.txt:1: expected "path label"'):
        Net(proto)


def test_window_data_is_refused(tmp_path):
    proto = write(tmp_path / "net.prototxt", '''
layer { name: "w" type: "WindowData" top: "data" top: "label"
  window_data_param { source: "w.txt" batch_size: 1 } }''')
    with pytest.raises(NetrunError, match="WindowData is not supported"):
        Net(proto)


# -- MemoryData and data layers given as inputs -------------------------------------------------------
def test_memory_data_tops_are_inputs(tmp_path):
    proto = write(tmp_path / "net.prototxt", '''
layer { name: "m" type: "MemoryData" top: "data" top: "label"
  memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
layer { name: "s" type: "Sigmoid" bottom: "data" top: "s" }
layer { name: "k" type: "Silence" bottom: "label" }''')
    net = Net(proto)
    assert net.inputs == ["data", "label"]
    assert net.blobs["data"].shape == (2, 1, 2, 2) and net.blobs["label"].shape == (2,)
    x = np.zeros((2, 1, 2, 2), np.float32)
    np.testing.assert_allclose(net.forward(data=x)["s"], 0.5)


def test_input_shape_replaces_data_layers(tmp_path):
    proto = write(tmp_path / "net.prototxt", '''
layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  data_param { source: "missing_train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TEST }
  data_param { source: "missing_test_lmdb" batch_size: 100 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }''')
    for phase in ("train", "test"):
        net = Net(proto, phase=phase, input_shapes={"data": (4, 5)})
        assert net.inputs == ["data", "label"]
        assert net.blobs["data"].shape == (4, 5) and net.blobs["label"].shape == (4,)
    res = run("forward", proto, "--input-shape", "data=4,5")
    assert 'input "label" (4,): no array given, using zeros' in res.output
    assert "total loss" in res.output
    with pytest.raises(NetrunError, match=r'"zzz" is not an input of the net \(inputs: data, label\)'):
        Net(proto, input_shapes={"zzz": (1,)})


# -- Python layers -------------------------------------------------------------------------------------
PY_LAYER = '''
import caffe
import numpy as np


class Scale(caffe.Layer):
    """y = k * x * w, k from param_str, w a learnable (1,) blob."""

    def setup(self, bottom, top):
        self.k = float(self.param_str)
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 3

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.k * self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += self.k * np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = self.k * self.blobs[0].data[0] * top[0].diff
'''


@pytest.fixture
def py_net(tmp_path):
    mod = f"netrun_test_pylayer_{abs(hash(str(tmp_path))) % 10**8}"
    write(tmp_path / f"{mod}.py", PY_LAYER)
    yield write(tmp_path / "net.prototxt", f'''
force_backward: true
layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ name: "py" type: "Python" bottom: "x" top: "y"
  python_param {{ module: "{mod}" layer: "Scale" param_str: "2" }} }}'''), mod
    sys.modules.pop(mod, None)


def test_python_layer_needs_the_flag(py_net):
    proto, mod = py_net
    with pytest.raises(NetrunError) as e:
        Net(proto)
    for word in (mod, "Scale", "--allow-python-layers"):
        assert word in str(e.value)
    res = run("forward", proto, ok=False)
    assert res.exit_code == 2 and "--allow-python-layers" in res.output


def test_python_layer_forward_backward(py_net):
    proto, _ = py_net
    net = Net(proto, allow_python_layers=True)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(net.forward(x=x)["y"], 6 * x)
    net.backward(y=np.ones((2, 3), np.float32))
    np.testing.assert_allclose(net.blobs["x"].diff, 6)
    np.testing.assert_allclose(net.params["py"][0].diff, [2 * x.sum()])
    res = run("forward", proto, "--allow-python-layers")
    assert "Python" in res.output


# -- image inputs -----------------------------------------------------------------------------------
def test_read_image_and_resize(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 256, (5, 7, 4)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgba[..., 2::-1])
    img = read_image(tmp_path / "c.png")
    assert resize_linear(img, 5, 7) is img
    for h, w in ((10, 14), (3, 4), (7, 3)):               # vs a float bilinear reference
        out = resize_linear(img, h, w)
        assert out.shape == (h, w, 3) and out.dtype == np.uint8
        sy = np.clip((np.arange(h) + 0.5) * 5 / h - 0.5, 0, 4)
        sx = np.clip((np.arange(w) + 0.5) * 7 / w - 0.5, 0, 6)
        rows = np.stack([[np.interp(sx, np.arange(7), img[r, :, c]) for c in range(3)]
                         for r in range(5)])              # (5, 3, w)
        ref = np.stack([[np.interp(sy, np.arange(5), rows[:, c, x]) for x in range(w)]
                        for c in range(3)]).transpose(2, 1, 0)
        assert np.abs(out - ref).max() <= 1.0


class FakeNet:
    def __init__(self, shape, dtype=np.float32):
        from netrun.blob import Blob
        self.inputs = ["data"]
        self.blobs = {"data": Blob(shape, dtype)}
        self.dtype = np.dtype(dtype)


def test_load_images_preprocess_order(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    bgr = rgb[..., ::-1].transpose(2, 0, 1).astype(np.float32)
    net = FakeNet((1, 3, 4, 4))
    base = {"raw_scale": None, "mean": None, "mean_file": None, "scale": None}
    np.testing.assert_array_equal(load_images(net, "data", [tmp_path / "a.png"], base)[0], bgr)
    o = dict(base, raw_scale=1.0, mean="0.1,0.2,0.3", scale=10.0)
    got = load_images(net, "data", [tmp_path / "a.png"] * 2, o)
    want = (bgr / 255 - np.array([0.1, 0.2, 0.3]).reshape(3, 1, 1)) * 10
    assert got.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(got[1], want, rtol=1e-5, atol=1e-5)
    # a larger mean file is center-cropped; gray inputs take one channel
    m = np.arange(36, dtype=np.float64).reshape(1, 6, 6)
    np.testing.assert_array_equal(fit_mean(m, (1, 4, 4), "m"), m[:, 1:5, 1:5])
    np.save(tmp_path / "m.npy", m)
    got = load_images(FakeNet((1, 1, 4, 4)), "data", [tmp_path / "a.png"],
                      dict(base, mean_file=str(tmp_path / "m.npy")))
    assert got.shape == (1, 1, 4, 4)
    with pytest.raises(NetrunError, match="has 1 channels, the input has 3"):
        load_images(net, "data", [tmp_path / "a.png"], dict(base, mean_file=str(tmp_path / "m.npy")))
    with pytest.raises(NetrunError, match="no such image file"):
        load_images(net, "data", [tmp_path / "zz.png"], base)


def test_labels_file(tmp_path):
    write(tmp_path / "synset.txt", "n01440764 tench, Tinca tinca\nn01443537 goldfish\n")
    assert read_labels(tmp_path / "synset.txt") == ["tench, Tinca tinca", "goldfish"]
    write(tmp_path / "plain.txt", "sea lion\ncat\n\n")
    assert read_labels(tmp_path / "plain.txt") == ["sea lion", "cat"]
