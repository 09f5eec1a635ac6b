"""`netrun upgrade` on every V0/V1 corpus file: the V2 file gives the same forward output."""
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from netrun.cli import main

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
CORPUS = Path(os.environ.get("NETRUN_CORPUS", SHARED / "corpus"))

# file -> --input-shape arguments (small batches; data layers become Input layers)
LEGACY = {
    "vgg/VGG_ILSVRC_19_layers_deploy.prototxt": ["data=1,3,224,224"],
    "agegender/age_net_deploy.prototxt": ["data=1,3,227,227"],
    "agegender/gender_net_deploy.prototxt": ["data=1,3,227,227"],
    "weights/cifar10_quick/prediction_example.prototxt": ["data=2,3,32,32"],
    "bvlc_v0/cifar10_quick_train.prototxt": ["data=2,3,32,32", "label=2"],
    "bvlc_v0/lenet.prototxt": [],
    "bvlc_v0/imagenet.prototxt": ["data=1,3,227,227"],
    # both of its TEST data layers need a stage (as in Caffe): run the TRAIN net
    "bvlc_v1/mnist_autoencoder.prototxt": ["data=2,1,28,28", "--phase", "train"],
    "bvlc_v1/googlenet_deploy.prototxt": ["data=1,3,224,224"],
    "bvlc_v1/mnist_siamese_train_test.prototxt": ["pair_data=2,2,28,28", "sim=2"],
    "bvlc_v1/lenet_train_test.prototxt": ["data=2,1,28,28", "label=2"],
    "bvlc_v1/cifar10_quick.prototxt": [],
    "bvlc_v1/alexnet_deploy.prototxt": ["data=1,3,227,227"],
    "bvlc_v1/imagenet_train_val_pre_transform_param.prototxt": ["data=1,3,227,227", "label=1"],
    "bvlc_v1/lenet.prototxt": [],
}

if not CORPUS.is_dir():
    pytest.skip(f"corpus folder {CORPUS} does not exist", allow_module_level=True)


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("rel", sorted(LEGACY))
def test_upgrade_keeps_forward_output(rel, tmp_path):
    src = CORPUS / rel
    new = tmp_path / "v2.prototxt"
    run("upgrade", src, new)
    text = new.read_text()
    assert "layers {" not in text and "layer {" in text
    args = LEGACY[rel]
    shapes = []
    for i, a in enumerate(args):
        if a.startswith("--") or (i and args[i - 1].startswith("--")):
            shapes.append(a)
        else:
            shapes += ["--input-shape", a]
    outs = []
    for model in (src, new):
        out = tmp_path / f"{model.stem}.npz"
        run("forward", model, *shapes, "--seed", "3", "--save", out, "-q")
        outs.append(np.load(out))
    a, b = outs
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_upgrade_binary_caffemodel(tmp_path):
    src = CORPUS / "weights" / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel"
    if not src.exists():
        pytest.skip("cifar10_quick caffemodel absent")
    out = tmp_path / "new.caffemodel"
    run("upgrade", src, out)
    from netrun.proto import caffe_pb2
    p = caffe_pb2.NetParameter.FromString(out.read_bytes())
    assert not len(p.layers) and len(p.layer) >= 10
