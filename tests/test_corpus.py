"""Every real prototxt of ../shared/corpus parses: BVLC's fields and those of the Caffe
forks (docs/forks.md)."""
import os
from pathlib import Path

import pytest

from netrun.io.prototxt import read_net

CORPUS = Path(os.environ.get("NETRUN_CORPUS",
                             Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"))
FILES = sorted(p for p in CORPUS.rglob("*.prototxt") if "solver" not in p.name) if CORPUS.is_dir() else []

# files that use fields only a Caffe fork defines (see corpus/LAYERS.md)
FORK_FIELDS = {
    "enet/enet_deploy.prototxt": "bn_param",
    "enet/enet_deploy_final.prototxt": "bn_param",
    "faster_rcnn/ZF_faster_rcnn_end2end_test.prototxt": "roi_pooling_param",
    "segnet/segnet_inference.prototxt": "dense_image_data_param",
    "segnet/segnet_model_driving_webdemo.prototxt": "bn_param",
    "shufflenet/shufflenet_1x_g3_deploy.prototxt": "shuffle_channel_param",
    "shufflenet/shufflenet_v2_1x_deploy.prototxt": "shuffle_channel_param",
    "ssd/MobileNetSSD_deploy.prototxt": "permute_param",
    "ssd/res10_300x300_ssd_face_deploy.prototxt": "norm_param",
}

if not FILES:
    pytest.skip(f"corpus folder {CORPUS} does not exist", allow_module_level=True)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_prototxt(path):
    rel = str(path.relative_to(CORPUS))
    src = read_net(path, warn=lambda m: None)
    assert len(src.param.layer) > 0
    assert not len(src.param.layers)                            # upgraded to V2
    if rel in FORK_FIELDS:                                      # the fork's field is read
        assert any(lp.HasField(FORK_FIELDS[rel]) for lp in src.param.layer)


def test_fork_list_is_exact():
    assert all((CORPUS / rel).exists() for rel in FORK_FIELDS)
