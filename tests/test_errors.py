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
    import time
    p = write(tmp_path, 'layer { name: "x" type: "Input" top: "x" '
                        'input_param { shape { dim: 100000000000 dim: 3 } } }\n'
                        'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')
    t0 = time.time()
    line = fails("forward", p, needles=["TiB", '"x"', "--max-memory"])
    assert time.time() - t0 < 1.0, line


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
