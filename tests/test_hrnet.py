"""HRNet backbones: sizes, key names of the releases, shapes, ImageNet loading by name."""
from pathlib import Path

import pytest
import torch

from facemark.models.hrnet import hrnet_w18c, hrnet_w18c_lite, load_imagenet_hrnet

torch.set_num_threads(1)
# The authors' released key list (key<TAB>shape), shipped with the tests (from shared/facts).
OFFICIAL_KEYS = Path(__file__).parent / "data" / "slpt_official_state_dict_wflw98_6layers.txt"


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_lite_size_and_release_key_names():
    backbone = hrnet_w18c_lite()
    assert _count(backbone) == 3_610_762  # shared/facts/slpt.md: backbone share of 13,194,380
    state = backbone.state_dict()
    assert len(state) == 705
    expected_shapes = {  # a sample of the release's backbone.* keys (facts key list)
        "conv1.weight": (64, 3, 3, 3),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "transition1.1.0.0.weight": (36, 256, 3, 3),
        "transition2.2.0.0.weight": (72, 36, 3, 3),
        "transition3.3.0.1.running_var": (144,),
        "stage2.0.fuse_layers.0.1.0.weight": (18, 36, 1, 1),
        "stage4.0.branches.3.3.conv2.weight": (144, 144, 3, 3),
        "stage4.0.fuse_layers.3.0.1.0.weight": (18, 18, 3, 3),
        "stage4.0.fuse_layers.3.0.2.0.weight": (144, 18, 3, 3),
        "head.0.bias": (270,),
        "head.1.num_batches_tracked": (),
        "head.3.weight": (256, 270, 1, 1),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert all(m.momentum == 0.01 for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    official = {}
    for line in OFFICIAL_KEYS.read_text().splitlines():
        key, shape = line.split("\t")
        if key.startswith("backbone."):
            official[key[len("backbone."):]] = shape.strip()
    assert {k: str(tuple(v.shape)) for k, v in state.items()} == official


def test_shapes_and_branches():
    x = torch.randn(1, 3, 64, 64)
    for backbone in (hrnet_w18c_lite(), hrnet_w18c()):
        backbone.eval()
        with torch.no_grad():
            assert backbone(x).shape == (1, 256, 16, 16)
            branches = backbone.forward_branches(x)
        assert [b.shape[1] for b in branches] == [18, 36, 72, 144]
        assert [b.shape[-1] for b in branches] == [16, 8, 4, 2]  # strides 4, 8, 16, 32


def test_full_hrnet_w18_module_counts():
    backbone = hrnet_w18c()
    assert (len(backbone.stage2), len(backbone.stage3), len(backbone.stage4)) == (1, 4, 3)
    # HRNetV2-W18 with a 98-channel final conv instead of 256 has the paper's 9.66 M (Table 8).
    assert _count(backbone) - (270 * 256 + 256) + (270 * 98 + 98) == 9_662_528


def test_load_imagenet_hrnet_by_name(tmp_path):
    # A stand-in for hrnetv2_w18_imagenet_pretrained.pth: the full W18 trunk plus classifier keys.
    source = hrnet_w18c()
    for p in source.parameters():
        torch.nn.init.normal_(p)
    file_state = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    file_state["classifier.weight"] = torch.zeros(1000, 2048)
    file_state["incre_modules.0.0.conv1.weight"] = torch.zeros(32, 18, 1, 1)
    file_state["stage2.0.branches.0.0.bn1.weight"] = torch.ones(7)  # wrong shape: reported, not loaded
    path = tmp_path / "hrnetv2_w18_imagenet_pretrained.pth"
    torch.save({"module." + k: v for k, v in file_state.items()}, path)

    target = hrnet_w18c_lite()
    before = target.stage2[0].branches[0][0].bn1.weight.clone()
    report = load_imagenet_hrnet(target, path)
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    assert torch.equal(target.stage4[0].fuse_layers[3][0][2][0].weight, source.stage4[0].fuse_layers[3][0][2][0].weight)
    assert torch.equal(target.stage2[0].branches[0][0].bn1.weight, before)
    assert "classifier.weight" in report["unexpected"] and "stage3.1.branches.0.0.conv1.weight" in report["unexpected"]
    assert report["shape_mismatch"] == ["stage2.0.branches.0.0.bn1.weight: file (7,) vs module (18,)"]
    assert set(report["missing"]) == {k for k in target.state_dict() if k.startswith("head.")}
    assert len(report["matched"]) == 705 - len(report["missing"]) - 1

    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no key of the file fits"):
        load_imagenet_hrnet(target, tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError):
        load_imagenet_hrnet(target, tmp_path / "absent.pth")
