"""Issue 13: `netrun export` to ONNX with Caffe's semantics; ONNX Runtime as an engine.

* Every conformance case (../shared/conformance/cases) is exported and run in ONNX
  Runtime on the case's inputs and weights; its forward arrays are compared with
  the goldens computed by real Caffe, at the case's tolerance (net or single-layer,
  see tests/conformance.py).  The exported outputs are the net's outputs, or, where
  those are all losses, the blobs the losses read (the deploy part of the net).
  Cases whose layer under test is a loss or has no ONNX converter say so.
* Every net of ../shared/conformance/extra_nets (no goldens: they are checked
  against netrun's engine, itself checked against Caffe) at small input sizes.
* Small nets for each Caffe rule converters get wrong (ceil-and-clip pooling, the
  clipped AVE divisor, LRN's regions, ArgMax ties, in-place chains...) against
  netrun's engine at the single-layer tolerance.
* The CLI: export --check / --static, forward/time --engine onnxruntime, errors.
ONNX Runtime runs with 1 thread: results and time do not depend on the machine.
"""
import re
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnx", reason="the onnx extra is not installed")

from click.testing import CliRunner  # noqa: E402

from conformance import Case, build_net, case_dirs, compare, fill_recipe  # noqa: E402
from netrun import Net  # noqa: E402
from netrun.cli import main  # noqa: E402
from netrun.errors import NetrunError  # noqa: E402
from netrun.export.onnx import NOT_EXPORTABLE, export  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXTRA = ROOT.parent / "shared" / "conformance" / "extra_nets"


def quiet(_message):
    pass


def session(ex):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(ex.model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def run_ort(ex, arrays):
    feeds = {n: np.ascontiguousarray(arrays[n], np.float32) for n in ex.inputs}
    got = session(ex).run(list(ex.outputs.values()), feeds)
    return dict(zip(ex.outputs, got))


def deploy_outputs(net):
    """The net's outputs that are not losses; else the blobs its losses read."""
    outs = list(dict.fromkeys(_source(net, n) for n in net.outputs if not _from_loss(net, n)))
    if outs:
        return outs
    found = []
    for li, layer in enumerate(net.layers):
        if layer.is_loss or layer.type in NOT_EXPORTABLE:
            for b in net.bottom_ids[li]:
                src = _source(net, b)
                if src not in net.inputs and src not in found:
                    found.append(src)
    return found


def _producer(net, blob):
    return max((li for li, tops in enumerate(net.top_ids) if blob in tops), default=None)


def _from_loss(net, blob):
    li = _producer(net, blob)
    return li is not None and (net.layers[li].is_loss or net.layers[li].type in NOT_EXPORTABLE)


def _source(net, blob):
    """Through the Split layers netrun inserts, the blob the user named."""
    li = _producer(net, blob)
    while li is not None and net.layers[li].type == "Split" and "_split_" in blob:
        blob = net.bottom_ids[li][0]
        li = _producer(net, blob)
    return blob


# ---------------------------------------------------------------------------------
# conformance cases against Caffe's goldens
# ---------------------------------------------------------------------------------
CASES = case_dirs()


@pytest.mark.parametrize("name", list(CASES))
def test_case_matches_caffe(name):
    case = Case(CASES[name])
    missing = case.missing_types()
    if missing:
        pytest.skip(f"netrun does not implement {', '.join(missing)}")
    net = build_net(case)
    outs = deploy_outputs(net)
    if not outs:
        pytest.skip("every output is a loss of the net's inputs: no forward-only meaning")
    try:
        ex = export(net, outputs=outs, warn=quiet)
    except NetrunError as e:
        if "no ONNX converter" in str(e):
            pytest.xfail(f"not exported: {e}")
        raise
    got = run_ort(ex, case.inputs())
    rep = compare(case, {f"data/{b}": v for b, v in got.items()})
    rows = [r for r in rep.rows
            if any(r[0] == f"data/{b}" or r[0].startswith(f"data/{b}[") for b in outs)]
    assert rows, f"no golden for {outs}"
    bad = [r for r in rows if not r[1] <= 1.0]
    assert not bad, "; ".join(f"{k}: {ratio:.3g}x tol (abs {a:.3g}) {note}"
                              for k, ratio, a, note in bad)


# ---------------------------------------------------------------------------------
# extra_nets against netrun's engine
# ---------------------------------------------------------------------------------
IMG = {"data": (1, 3, 64, 64)}
TINY = {"data": (1, 3, 32, 32)}
EXTRA_ARGS = {       # small inputs (see tests/test_real_nets.py); kernel edits for 7x7 pools
    "net_age_v1": (IMG, []),
    "net_alexnet_v1": (IMG, []),
    "net_cifar10_quick_v1": ({}, []),
    "net_fcn8s_small": ({"data": (1, 3, 16, 16)}, ["fc6.convolution_param.num_output=64"]),
    "net_googlenet_v1": (IMG, ["pool5/7x7_s1.pooling_param.kernel_size=2"]),
    "net_inception_v3": ({"data": (1, 3, 75, 75)}, []),
    "net_lenet_v0": ({}, []),
    "net_mobilenet_v2": (TINY, []),
    "net_nin": ({"data": (1, 3, 96, 96)}, ["pool4.pooling_param.kernel_size=2"]),
    "net_resnet101": (IMG, ["pool5.pooling_param.kernel_size=2"]),
    "net_squeezenet10": (IMG, []),
    "net_vgg19_v1": (TINY, []),
    "net_xception": ({"data": (1, 3, 75, 75)}, []),
    "net_yolo_tiny": (IMG, []),
    "solver_adam_lenet": ({}, []),
    "solver_sgd_cifar10_quick": ({}, []),
}


def _extra_files():
    if not EXTRA.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{EXTRA} does not exist"))]
    return [pytest.param(p, id=p.stem) for p in sorted(EXTRA.glob("*.prototxt"))]


@pytest.mark.parametrize("path", _extra_files())
def test_extra_net_matches_netrun(path):
    shapes, edits = EXTRA_ARGS.get(path.stem, ({}, []))
    net = Net(str(path), phase="test", input_shapes=shapes or None, edits=edits, warn=quiet)
    fill_recipe(net)
    rng = np.random.default_rng(0)
    outs = deploy_outputs(net)
    ex = export(net, outputs=outs, warn=quiet)
    inputs = {n: (rng.standard_normal(net.blobs[n].shape) if n in ex.inputs      # labels: 0
                  else np.zeros(net.blobs[n].shape)).astype(np.float32) for n in net.inputs}
    got = run_ort(ex, inputs)
    ref = net.forward(blobs=outs, **inputs)
    for b in outs:
        want = np.asarray(ref[b], np.float64)
        atol = 1e-4 * max(1.0, float(np.abs(want).max()))
        err = np.abs(got[b] - want) / (atol + 1e-3 * np.abs(want))
        assert err.max() <= 1.0, f"{b}: {err.max():.3g}x the net tolerance"


# ---------------------------------------------------------------------------------
# Caffe's rules, one small net each, against netrun's engine (single-layer tolerance)
# ---------------------------------------------------------------------------------
def _net_text(shape, layers, inputs=("data",)):
    dims = " ".join(f"dim: {d}" for d in shape)
    text = [f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ {dims} }} }} }}'
            for n in inputs]
    return "\n".join(text) + "\n" + layers


RULES = {
    # ceil rounding and the clip rule: 6 + 2 - 3 over stride 2 -> 4 windows by ceil,
    # the last starts in the padding and is dropped (3 outputs)
    "max_ceil_clip": ((1, 2, 6, 6), 'layer { name: "p" type: "Pooling" bottom: "data" top: "y" '
                      'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }'),
    "ave_ceil_clip": ((1, 2, 6, 6), 'layer { name: "p" type: "Pooling" bottom: "data" top: "y" '
                      'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }'),
    # ceil past the input, no pad: the last window is cut by the input edge and the
    # AVE divisor counts only what is inside H + pad
    "ave_ceil_nopad": ((1, 2, 7, 8), 'layer { name: "p" type: "Pooling" bottom: "data" top: "y" '
                       'pooling_param { pool: AVE kernel_size: 3 stride: 2 } }'),
    "max_ceil_nopad": ((1, 2, 7, 8), 'layer { name: "p" type: "Pooling" bottom: "data" top: "y" '
                       'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }'),
    "ave_pad2_rect": ((2, 3, 9, 7), 'layer { name: "p" type: "Pooling" bottom: "data" top: "y" '
                      'pooling_param { pool: AVE kernel_h: 5 kernel_w: 3 stride_h: 3 stride_w: 2 '
                      'pad_h: 2 pad_w: 1 } }'),
    "ave_floor": ((1, 2, 7, 7), 'layer { name: "p" type: "Pooling" bottom: "data" top: "y" '
                  'pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 round_mode: FLOOR } }'),
    "global_ave": ((2, 3, 5, 4), 'layer { name: "p" type: "Pooling" bottom: "data" top: "y" '
                   'pooling_param { pool: AVE global_pooling: true } }'),
    "stochastic_test": ((1, 2, 6, 6), 'layer { name: "a" type: "AbsVal" bottom: "data" top: "a" } '
                        'layer { name: "p" type: "Pooling" bottom: "a" top: "y" '
                        'pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 } }'),
    # first-max ties: the mask top holds the first maximum's in-plane index
    "max_mask_ties": ((2, 2, 6, 7), 'layer { name: "t" type: "Threshold" bottom: "data" top: "t" } '
                      'layer { name: "p" type: "Pooling" bottom: "t" top: "y" top: "mask" '
                      'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }'),
    "spp_ave": ((2, 2, 9, 10), 'layer { name: "s" type: "SPP" bottom: "data" top: "y" '
                'spp_param { pyramid_height: 3 pool: AVE } }'),
    "lrn_within_k": ((1, 3, 6, 6), 'layer { name: "n" type: "LRN" bottom: "data" top: "y" '
                     'lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 norm_region: '
                     'WITHIN_CHANNEL } }'),
    "lrn_across_k": ((1, 7, 3, 3), 'layer { name: "n" type: "LRN" bottom: "data" top: "y" '
                     'lrn_param { local_size: 5 alpha: 0.3 beta: 0.6 k: 1.5 } }'),
    "inplace_chain": ((2, 3, 4, 4),
                      'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                      'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } } '
                      'layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" } '
                      'layer { name: "sc" type: "Scale" bottom: "c" top: "c" '
                      'scale_param { bias_term: true } } '
                      'layer { name: "r" type: "ReLU" bottom: "c" top: "c" '
                      'relu_param { negative_slope: 0.2 } } '
                      'layer { name: "d" type: "Dropout" bottom: "c" top: "c" }'),
    "scale_axis0": ((2, 3, 4), 'layer { name: "s" type: "Scale" bottom: "data" top: "y" '
                    'scale_param { axis: 0 num_axes: 2 bias_term: true } }'),
    "bias_axis2": ((2, 3, 4, 5), 'layer { name: "b" type: "Bias" bottom: "data" top: "y" '
                   'bias_param { axis: 2 num_axes: 1 } }'),
    "argmax_ties": ((3, 6), 'layer { name: "r" type: "Threshold" bottom: "data" top: "t" } '
                    'layer { name: "a" type: "ArgMax" bottom: "t" top: "y" '
                    'argmax_param { top_k: 3 out_max_val: true } }'),
    "argmax_axis_ties": ((2, 5, 3), 'layer { name: "r" type: "Threshold" bottom: "data" top: "t" '
                         '} layer { name: "a" type: "ArgMax" bottom: "t" top: "y" '
                         'argmax_param { top_k: 2 axis: 1 } }'),
    "reshape_0_m1": ((2, 3, 4, 2), 'layer { name: "r" type: "Reshape" bottom: "data" top: "y" '
                     'reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }'),
    "reshape_axis": ((2, 3, 4, 2), 'layer { name: "r" type: "Reshape" bottom: "data" top: "y" '
                     'reshape_param { axis: 2 num_axes: 1 shape { dim: 2 dim: 2 } } }'),
    "flatten_end": ((2, 3, 4, 2), 'layer { name: "f" type: "Flatten" bottom: "data" top: "y" '
                    'flatten_param { axis: 1 end_axis: 2 } }'),
    "power_exp_log": ((2, 5), 'layer { name: "e" type: "Exp" bottom: "data" top: "e" '
                      'exp_param { base: 3 scale: 0.5 shift: 0.2 } } '
                      'layer { name: "l" type: "Log" bottom: "e" top: "l" '
                      'log_param { base: 10 scale: 2 shift: 1 } } '
                      'layer { name: "p" type: "Power" bottom: "l" top: "y" '
                      'power_param { power: 1.5 scale: 0.7 shift: 0.3 } }'),
    "power_const": ((2, 5), 'layer { name: "p" type: "Power" bottom: "data" top: "y" '
                    'power_param { power: 2 scale: 0 shift: 3 } }'),
    "eltwise_coeff": ((2, 3, 2), 'layer { name: "s" type: "Split" bottom: "data" top: "a" top: "b" } '
                      'layer { name: "t" type: "TanH" bottom: "b" top: "c" } '
                      'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "c" top: "y" '
                      'eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }'),
    "deconv_full": ((1, 4, 5, 4), 'layer { name: "d" type: "Deconvolution" bottom: "data" top: "y" '
                    'convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2 '
                    'dilation: 2 weight_filler { type: "xavier" } } }'),
    "crop_offsets": ((1, 3, 8, 9), 'layer { name: "p" type: "Pooling" bottom: "data" top: "s" '
                     'pooling_param { pool: MAX kernel_size: 2 stride: 2 } } '
                     'layer { name: "c" type: "Crop" bottom: "data" bottom: "s" top: "y" '
                     'crop_param { axis: 2 offset: 1 offset: 3 } }'),
    "slice_axis3": ((2, 2, 3, 7), 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" '
                    'top: "c" slice_param { axis: 3 slice_point: 2 slice_point: 3 } } '
                    'layer { name: "k" type: "Concat" bottom: "c" bottom: "a" top: "y" '
                    'concat_param { axis: 3 } }'),
    "inplace_input": ((2, 4), 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }'),
    "prelu_shared_ip_axis": ((2, 3, 4), 'layer { name: "ip" type: "InnerProduct" bottom: "data" '
                             'top: "i" inner_product_param { num_output: 5 axis: 2 '
                             'weight_filler { type: "xavier" } bias_filler { type: "gaussian" } } } '
                             'layer { name: "p" type: "PReLU" bottom: "i" top: "y" '
                             'prelu_param { channel_shared: true } }'),
    "softmax_axis": ((2, 3, 4), 'layer { name: "s" type: "Softmax" bottom: "data" top: "y" '
                     'softmax_param { axis: 2 } }'),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_caffe_rule(rule, tmp_path):
    shape, layers = RULES[rule]
    path = tmp_path / "net.prototxt"
    path.write_text(_net_text(shape, layers))
    net = Net(str(path), phase="test", warn=quiet)
    fill_recipe(net)
    for layer in net.layers:
        if layer.type == "BatchNorm":               # a moving-average scale factor != 1
            layer.blobs[2].data[...] = 0.5
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    if "ties" in rule:
        x = np.round(x)
    outs = list(net.outputs)
    ref = {k: np.array(v) for k, v in net.forward(data=x.copy()).items()}
    ex = export(net, outputs=outs, warn=quiet)
    got = run_ort(ex, {"data": x})
    for k in outs:
        w = np.asarray(ref[k], np.float64)
        assert got[k].shape == w.shape, (k, got[k].shape, w.shape)
        atol = 1e-5 * max(1.0, float(np.abs(w).max()))
        err = np.abs(got[k] - w) / (atol + 1e-4 * np.abs(w))
        assert err.max() <= 1.0, f"{k}: {err.max():.3g}x the layer tolerance"
    if rule in BATCH_BOUND:
        return
    # the batch axis is dynamic: twice the batch gives each item's result twice
    got2 = run_ort(ex, {"data": np.concatenate([x, x])})
    for k in outs:
        np.testing.assert_array_equal(got2[k].shape, (2 * ref[k].shape[0],) + ref[k].shape[1:])
        np.testing.assert_allclose(got2[k], np.concatenate([got[k], got[k]]), rtol=1e-5, atol=1e-6)


BATCH_BOUND = {"scale_axis0"}        # a parameter over axis 0: the batch is fixed


# ---------------------------------------------------------------------------------
# the CLI and the engine
# ---------------------------------------------------------------------------------
LENET = str(ROOT / "models" / "lenet_deploy.prototxt")


def cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_export_check_and_names(tmp_path):
    import onnx
    out = tmp_path / "lenet.onnx"
    res = cli("export", LENET, "-o", str(out), "--check")
    assert res.exit_code == 0, res.output
    assert "check passed" in res.output
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == ["data"]
    assert [o.name for o in m.graph.output] == ["prob"]
    assert m.opset_import[0].version == 17
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    res = cli("export", LENET, "-o", str(out), "--static", "-q")
    assert res.exit_code == 0 and res.output == ""
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_check_fails_beyond_tolerance(tmp_path, monkeypatch):
    from netrun.export import onnx as exp
    exp._load_converters()

    def wrong_relu(ctx):                   # a converter that forgets Caffe's rule
        ctx.g.node("Identity", [ctx.x], out=ctx.out)
    monkeypatch.setitem(exp._CONVERTERS, "ReLU", wrong_relu)
    res = cli("export", LENET, "-o", str(tmp_path / "m.onnx"), "--check")
    assert res.exit_code == 1, res.output
    assert "check failed" in res.output


def test_forward_engine_prints_and_saves_as_numpy(tmp_path):
    a, b = tmp_path / "np.npz", tmp_path / "ort.npz"
    r1 = cli("forward", LENET, "--save", str(a))
    r2 = cli("forward", LENET, "--save", str(b), "--engine", "onnxruntime")
    assert r1.exit_code == 0 and r2.exit_code == 0, r2.output
    cols = lambda text: [ln.split()[:4] for ln in text.splitlines() if ln.strip()]  # noqa: E731
    assert cols(r1.output.replace(str(a), "F")) == cols(r2.output.replace(str(b), "F"))
    with np.load(a) as za, np.load(b) as zb:
        assert sorted(za.files) == sorted(zb.files)
        for k in za.files:
            np.testing.assert_allclose(zb[k], za[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_forward_engine_in_place_versions(tmp_path):
    # relu1 runs in place on ip1: the line after ip1 shows negatives, after relu1 none
    res = cli("forward", LENET, "--engine", "onnxruntime")
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.startswith(("ip1", "relu1"))}
    assert float(re.search(r"min (\S+)", lines["ip1"]).group(1)) < 0
    assert float(re.search(r"min (\S+)", lines["relu1"]).group(1)) == 0


def test_time_engine():
    res = cli("time", LENET, "--engine", "onnxruntime", "-n", "2")
    assert res.exit_code == 0, res.output
    assert "Average Forward pass:" in res.output


def test_loss_on_the_path_is_an_error(tmp_path):
    p = tmp_path / "n.prototxt"
    p.write_text(_net_text((2, 3), 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "o" '
                 'inner_product_param { num_output: 3 } } '
                 'layer { name: "sm" type: "Softmax" bottom: "o" top: "p" } '
                 'layer { name: "acc" type: "Accuracy" bottom: "p" bottom: "label" top: "a" } '
                 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "o" bottom: "label" '
                 'top: "l" } ', inputs=("data",)).replace(
        'top: "data" input_param { shape { dim: 2 dim: 3 } }',
        'top: "data" top: "label" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } }'))
    out = str(tmp_path / "m.onnx")
    res = cli("export", str(p), "-o", out, "--blob", "l")
    assert res.exit_code == 2
    assert 'layer "loss" (SoftmaxWithLoss)' in res.output and "Traceback" not in res.output
    # the default outputs leave the loss and the metric out, with a warning each
    res = CliRunner(mix_stderr=False).invoke(main, ["export", str(p), "-o", out, "--check"]) \
        if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else cli("export", str(p), "-o",
                                                                          out, "--check")
    assert res.exit_code == 0, res.output
    text = res.output + (res.stderr if hasattr(res, "stderr") and res.stderr_bytes else "")
    assert 'layer "acc" (Accuracy)' in text and 'layer "loss" (SoftmaxWithLoss)' in text
    assert "outputs p" in text
    res = cli("forward", str(p), "--engine", "onnxruntime")
    assert res.exit_code == 2 and 'layer "loss" (SoftmaxWithLoss)' in res.output


def test_python_layer_on_the_path_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "twice_layer.py").write_text(
        "import caffe\n"
        "class Twice(caffe.Layer):\n"
        "    def setup(self, bottom, top): pass\n"
        "    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top): top[0].data[...] = 2 * bottom[0].data\n")
    p = tmp_path / "n.prototxt"
    p.write_text(_net_text((2, 3), 'layer { name: "tw" type: "Python" bottom: "data" top: "y" '
                                   'python_param { module: "twice_layer" layer: "Twice" } }'))
    monkeypatch.chdir(tmp_path)
    res = cli("export", str(p), "-o", str(tmp_path / "m.onnx"), "--allow-python-layers")
    assert res.exit_code == 2
    assert 'n.prototxt:2: layer "tw" (Python)' in res.output, res.output
    assert not (tmp_path / "m.onnx").exists()


def test_legacy_v1_net_exports(tmp_path):
    path = EXTRA / "net_cifar10_quick_v1.prototxt"
    if not path.exists():
        pytest.skip(f"{path} does not exist")
    res = cli("export", str(path), "-o", str(tmp_path / "m.onnx"), "--check", "-q")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_recurrent_restart_static_and_exposed_state(kind, tmp_path):
    """cont = 0 in mid-sequence restarts an item; a static input; h0/c0 given."""
    T, N, H = 4, 3, 5
    states = ["h0", "c0"] if kind == "LSTM" else ["h0"]
    shapes = {"x": (T, N, 2, 3), "cont": (T, N), "xs": (N, 4), **{s: (1, N, H) for s in states}}
    text = "\n".join(f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                     + " ".join(f"dim: {d}" for d in s) + " } } }" for n, s in shapes.items())
    tops = " ".join(f'top: "{t}"' for t in ["y"] + [s.replace("0", "T") for s in states])
    bottoms = " ".join(f'bottom: "{b}"' for b in ["x", "cont", "xs"] + states)
    text += (f'\nlayer {{ name: "r" type: "{kind}" {bottoms} {tops} recurrent_param {{ '
             f'num_output: {H} expose_hidden: true weight_filler {{ type: "uniform" min: -0.5 '
             'max: 0.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }\n')
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    net = Net(str(path), phase="test", warn=quiet)
    rng = np.random.default_rng(3)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    feeds["cont"] = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1]], np.float32)
    ref = {k: np.array(v) for k, v in net.forward(**feeds).items()}
    got = run_ort(export(net, warn=quiet), feeds)
    assert sorted(got) == sorted(ref)
    for k in ref:
        atol = 1e-5 * max(1.0, float(np.abs(ref[k]).max()))
        err = np.abs(got[k] - ref[k]) / (atol + 1e-4 * np.abs(ref[k]))
        assert err.max() <= 1.0, f"{k}: {err.max():.3g}x the layer tolerance"


def test_engine_refuses_train_dropout(tmp_path):
    p = tmp_path / "n.prototxt"
    p.write_text(_net_text((2, 3), 'layer { name: "d" type: "Dropout" bottom: "data" top: "y" }'))
    res = cli("forward", str(p), "--phase", "train", "--engine", "onnxruntime")
    assert res.exit_code == 2 and 'layer "d" (Dropout)' in res.output and "TRAIN" in res.output
    assert cli("forward", str(p), "--engine", "onnxruntime", "-q").exit_code == 0


def test_net_engine_option_runs_forward_on_onnxruntime():
    """Net(..., engine="onnxruntime"): forward on ONNX Runtime, results in the blobs,
    per-layer callbacks see each layer's tops; backward and partial passes refuse."""
    import netrun
    x = np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32)
    ref = netrun.Net(LENET, phase="test", seed=1)
    want = ref.forward(data=x)
    net = netrun.Net(LENET, phase="test", seed=1, engine="onnxruntime")
    got = net.forward(data=x)
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)
        np.testing.assert_array_equal(net.blobs[k].data, got[k])
    seen = []
    net.forward(data=x, on_layer=seen.append, blobs=["ip1"])
    assert seen and seen == sorted(seen)
    np.testing.assert_allclose(net.blobs["ip1"].data, ref.blobs["ip1"].data, rtol=1e-4, atol=1e-5)
    with pytest.raises(netrun.NetrunError, match="backward runs on netrun's own engine"):
        net.backward()
    with pytest.raises(netrun.NetrunError, match="runs the whole net"):
        net.forward(end="ip1")
    with pytest.raises(netrun.NetrunError, match="engine must be one of"):
        netrun.Net(LENET, engine="tensorrt")
