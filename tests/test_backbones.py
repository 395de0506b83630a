"""Backbones written in facemark: strides, channels, parameter counts, weight loading, SDFL feature maps."""
import sys

import pytest
import torch

from facemark.models.mobilenet import mobilenet_v2
from facemark.models.resnet import load_imagenet_resnet, resnet18, resnet34
from facemark.models.sdfl import build_backbone
from facemark.models.vgg import vgg16

torch.set_num_threads(1)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("builder, channels, parameters", [
    (resnet18, (64, 128, 256, 512), 11_176_512),
    (resnet34, (64, 128, 256, 512), 21_284_672),
    (mobilenet_v2, (24, 32, 96, 1280), 2_223_872),
    (vgg16, (128, 256, 512, 512), 14_723_136),
])
def test_multiscale_backbones_strides_and_channels(builder, channels, parameters):
    # Parameter counts are those of the standard architectures without their classifiers.
    backbone = builder()
    assert backbone.out_channels == channels
    assert _count(backbone) == parameters
    features = backbone(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(1, c, 64 // s, 64 // s) for c, s in zip(channels, (4, 8, 16, 32))]


def test_resnet_torchvision_key_names_and_bn_momentum():
    backbone = resnet34(bn_momentum=0.01)
    keys = backbone.state_dict().keys()
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.bias", "layer4.2.bn2.weight"):
        assert key in keys
    assert all(m.momentum == 0.01 for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_load_imagenet_resnet_reports_matched_and_unmatched(tmp_path):
    source = resnet18()
    with torch.no_grad():
        source.layer3[1].conv2.weight.fill_(0.125)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # DataParallel-style prefix
    state["fc.weight"] = torch.zeros(1000, 512)  # the ImageNet classifier, unused
    state["fc.bias"] = torch.zeros(1000)
    del state["module.layer4.1.bn2.weight"]
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save({"state_dict": state}, path)

    target = resnet18()
    report = load_imagenet_resnet(target, path)
    assert sorted(report["unexpected"]) == ["fc.bias", "fc.weight"]
    assert report["missing"] == ["layer4.1.bn2.weight"]
    assert len(report["matched"]) == len(target.state_dict()) - 1
    assert torch.all(target.layer3[1].conv2.weight == 0.125)
    with pytest.raises(ValueError, match="missing"):
        load_imagenet_resnet(resnet18(), path, strict=True)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_imagenet_resnet(resnet18(), tmp_path / "absent.pth")


def test_load_imagenet_resnet_reports_shape_mismatch(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(resnet34().state_dict(), path)
    report = load_imagenet_resnet(resnet18(), path)  # layer3.2.. exist only in ResNet-34
    assert report["shape_mismatch"] == []
    assert "layer3.5.conv1.weight" in report["unexpected"]
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    report = load_imagenet_resnet(resnet18(), path)
    assert report["shape_mismatch"] and report["shape_mismatch"][0].startswith("conv1.weight")


@pytest.mark.parametrize("name, channels", [
    ("resnet18", 512), ("resnet34", 512), ("mobilenet_v2", 1280), ("vgg16", 512), ("hrnet_w18c", 270),
])
def test_sdfl_backbones_give_one_stride32_map(name, channels):
    # 8 x 8 for a 256 crop; here 64 -> 2 x 2 to stay fast.
    backbone = build_backbone(name)
    assert backbone.out_channels == channels
    with torch.no_grad():
        feature_map = backbone.eval()(torch.zeros(1, 3, 64, 64))
    assert tuple(feature_map.shape) == (1, channels, 2, 2)


def test_hrnet_feature_map_drops_the_unused_landmark_head():
    backbone = build_backbone("hrnet_w18c")
    assert not any(name.startswith("trunk.head.") for name, _ in backbone.named_parameters())


def test_timm_backbone_without_timm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail even where it is installed
    with pytest.raises(ImportError, match="optional timm package"):
        build_backbone("timm:efficientnet_b0")


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="resnet18"):
        build_backbone("resnet50")


def test_mobilenet_v2_can_stop_at_stride_16():
    import torch

    from facemark.models.mobilenet import mobilenet_v2

    full, truncated = mobilenet_v2(), mobilenet_v2(num_outputs=3)
    maps = truncated(torch.zeros(1, 3, 64, 64))
    assert [m.shape[1:] for m in maps] == [(24, 16, 16), (32, 8, 8), (96, 4, 4)]
    assert truncated.out_channels == (24, 32, 96)
    assert sum(p.numel() for p in truncated.parameters()) < sum(p.numel() for p in full.parameters()) / 2


def test_half_width_fused_mobilenet_v2_is_the_slpt_backbone_mobilenet_v2_050():
    from facemark.models.slpt import BACKBONES

    half, full = BACKBONES["mobilenet_v2_050"](), BACKBONES["mobilenet_v2"]()
    assert half.trunk.out_channels == (16, 16, 48)  # 24, 32, 96 x 0.5, rounded up to multiples of 8
    assert half(torch.zeros(1, 3, 64, 64)).shape == (1, 128, 16, 16)
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in full.parameters()) / 2


@pytest.mark.parametrize("builder", ["resnet18_fused", "mobilenet_v2_fused", "mobilenet_v2_050_fused"])
def test_multiscale_fusion_projects_before_upsampling_without_changing_the_map(builder):
    # MultiScaleFusion computes conv1x1(cat(upsample(f_k))) as sum_k upsample(conv1x1_k(f_k)):
    # compare with the literal concatenation, gradients included.
    import torch.nn.functional as F

    from facemark.models import slpt

    torch.manual_seed(0)
    fusion = getattr(slpt, builder)().eval()
    images = torch.randn(2, 3, 64, 64, requires_grad=True)
    fused = fusion(images)
    features = fusion.trunk(images)
    upsampled = [features[0]] + [F.interpolate(f, size=features[0].shape[-2:], mode="bilinear", align_corners=False)
                                 for f in features[1:]]
    literal = fusion.head(torch.cat(upsampled, dim=1))
    assert fused.shape == (2, fusion.out_channels, 16, 16)
    torch.testing.assert_close(fused, literal, rtol=1e-4, atol=1e-5)
    weight = torch.randn_like(fused)
    gradient_fused, = torch.autograd.grad((fused * weight).sum(), images)
    gradient_literal, = torch.autograd.grad((literal * weight).sum(), images)
    torch.testing.assert_close(gradient_fused, gradient_literal, rtol=1e-4, atol=1e-5)
