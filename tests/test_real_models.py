"""Trained Caffe models from the corpus, fed real images through the CLI; the expected
classes and probabilities are what BVLC Caffe computed (corpus README)."""
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from netrun import Net
from netrun.cli import main

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
LENET = CORPUS / "weights" / "lenet_mnist"
CIFAR = CORPUS / "weights" / "cifar10_quick"

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the model corpus {CORPUS} "
                                                            "is not on this machine")
TOP = re.compile(r"^top-\d+ of (\S+), item (\d+)")
ROW = re.compile(r"^\s+\d+\. class (\d+)\s+([0-9.]+)")


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def top_classes(output):
    """{item: [(class, prob), ...]} from the top-5 listing of `netrun forward`."""
    items, cur = {}, None
    for line in output.splitlines():
        m = TOP.match(line)
        if m:
            cur = items.setdefault(int(m.group(2)), [])
            continue
        m = ROW.match(line)
        if m and cur is not None:
            cur.append((int(m.group(1)), float(m.group(2))))
    return items


def test_lenet_digit_7():
    out = run("forward", LENET / "mnist_deploy.prototxt", "--weights", LENET / "lenet_iter_10000.caffemodel",
              "--input", f"data={LENET / 'samples' / 'img_7_0.png'}", "--scale", "0.00390625")
    top = top_classes(out)
    assert top[0][0][0] == 7 and top[0][0][1] >= 0.997


def test_lenet_all_samples_as_one_batch():
    samples = sorted((LENET / "samples").glob("img_*.png"))
    assert len(samples) == 10
    args = [a for p in samples for a in ("--input", f"data={p}")]
    out = run("forward", LENET / "mnist_deploy.prototxt", "--weights",
              LENET / "lenet_iter_10000.caffemodel", "--scale", "0.00390625", *args)
    assert "(10, 10)" in out                             # the batch follows the images
    top = top_classes(out)
    for i, p in enumerate(samples):
        label = int(p.name.split("_")[1])
        assert top[i][0][0] == label, p.name
        assert top[i][0][1] >= 0.997, p.name


CIFAR_EXPECTED = {                                       # corpus README, from BVLC Caffe
    "cat10.png": [(5, 0.4501), (3, 0.3926), (4, 0.1255)],
    "dog10.png": [(5, 0.9942), (3, 0.0046), (2, 0.0007)],
    "truck10.png": [(9, 0.9874), (0, 0.0121), (8, 0.0004)],
}


def test_cifar10_quick_v1_model_top3():
    model = CORPUS / "bvlc_v1" / "cifar10_quick.prototxt"
    weights = next(CIFAR.glob("*.caffemodel"))
    names = list(CIFAR_EXPECTED)
    args = [a for n in names for a in ("--input", f"data={CIFAR / 'images' / n}")]
    out = run("forward", model, "--weights", weights, *args)
    top = top_classes(out)
    for i, n in enumerate(names):
        got = top[i][:3]
        assert [c for c, _ in got] == [c for c, _ in CIFAR_EXPECTED[n]], n
        for (_, p), (_, q) in zip(got, CIFAR_EXPECTED[n]):
            assert abs(p - q) <= 1e-4 + 5e-7, (n, got)


def test_cifar10_labels_name_the_classes(tmp_path):
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    out = run("forward", CORPUS / "bvlc_v1" / "cifar10_quick.prototxt", "--weights",
              next(CIFAR.glob("*.caffemodel")), "--input", f"data={CIFAR / 'images' / 'truck10.png'}",
              "--labels", tmp_path / "labels.txt")
    assert re.search(r"1\. class 9\s+0\.98\d+\s+truck", out)


def test_train_val_net_runs_without_its_database():
    # the Data layers of lenet_train_test become inputs; the image goes in as "data"
    proto = CORPUS / "bvlc" / "lenet_train_test.prototxt"
    if not proto.exists():
        pytest.skip("lenet_train_test.prototxt not in the corpus")
    net = Net(str(proto), phase="train", weights=str(LENET / "lenet_iter_10000.caffemodel"),
              input_shapes={"data": (1, 1, 28, 28)})
    assert net.inputs == ["data", "label"] and net.blobs["label"].shape == (1,)
    from netrun.io.images import load_images
    x = load_images(net, "data", [LENET / "samples" / "img_4_4.png"],
                    {"scale": 0.00390625})
    net.forward(data=x, label=np.array([4.0], np.float32))
    assert net.blobs["loss"].data < 0.01
