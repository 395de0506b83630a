"""Device selection on GPUs (facemark.engine.distributed), checked with torch.cuda mocked: which
GPU each torchrun process takes, set_device, and device_id given to init_process_group."""
from __future__ import annotations

import warnings

import pytest
import torch

from facemark.engine import distributed
from facemark.engine.distributed import init_distributed, resolve_device


@pytest.fixture
def gpus(monkeypatch):
    """A machine with ``gpus.count`` visible GPUs; ``gpus.current`` records set_device."""
    class FakeCuda:
        count = 4
        current = []

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: FakeCuda.count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: FakeCuda.current.append(torch.device(device)))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return FakeCuda


def test_each_torchrun_process_takes_its_local_rank_gpu(gpus):
    assert resolve_device("auto", local_rank=3, world_size=4) == torch.device("cuda", 3)
    assert resolve_device("cuda", local_rank=2, world_size=4) == torch.device("cuda", 2)


def test_one_visible_gpu_per_process_is_gpu_0_whatever_the_local_rank(gpus):
    gpus.count = 1
    assert resolve_device("cuda", local_rank=5, world_size=8) == torch.device("cuda", 0)


def test_a_local_rank_beyond_the_visible_gpus_is_an_error(gpus):
    gpus.count = 2
    with pytest.raises(RuntimeError, match="LOCAL_RANK=3 but this process sees 2 GPUs"):
        resolve_device("auto", local_rank=3, world_size=4)


def test_an_explicit_index_is_kept_alone_and_refused_under_torchrun(gpus):
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match="every process on GPU 0"):
        resolve_device("cuda:0", local_rank=1, world_size=2)
    with pytest.raises(RuntimeError, match="sees 4 GPU"):
        resolve_device("cuda:7")


def test_a_single_process_on_cuda_1_sets_its_device(gpus):
    context = init_distributed("cuda:1")
    assert context.device == torch.device("cuda", 1) and not context.distributed
    assert gpus.current == [torch.device("cuda", 1)]


def test_torchrun_process_joins_nccl_with_its_device_id(gpus, monkeypatch):
    joined = {}
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **options: joined.update(options))
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "6")  # second machine
    monkeypatch.setenv("LOCAL_RANK", "2")
    context = init_distributed("auto")
    assert context.device == torch.device("cuda", 2) and context.rank == 6 and context.local_rank == 2
    assert gpus.current == [torch.device("cuda", 2)]
    assert joined["backend"] == "nccl" and joined["device_id"] == torch.device("cuda", 2)


# -- exports and the caller's model ----------------------------------------------------------------
from facemark.data.transforms import CropConvention  # noqa: E402
from facemark.models.slpt import SLPT, SLPTConfig, build_slpt, load_official_mean_face  # noqa: E402

CROP = CropConvention("landmarks", 1.2, 64)
TINY = SLPTConfig(num_points=98, num_layers=1, embed_dim=32, num_heads=2, feedforward_dim=64, patch_samples=3,
                  backbone="mobilenet_v2_050", num_stages=2)


class WatchedSLPT(SLPT):
    """An SLPT that records whether it was moved (``.to``, ``.cpu``, ``.cuda`` all go through _apply)."""

    def _apply(self, fn, recurse=True):
        self.moved = True
        return super()._apply(fn, recurse)


def _watched_slpt() -> WatchedSLPT:
    torch.manual_seed(0)
    model = build_slpt(TINY, mean_face=load_official_mean_face(98))
    watched = WatchedSLPT.__new__(WatchedSLPT)
    watched.__dict__ = model.__dict__
    watched.moved = False
    return watched.train()


def test_torchscript_traced_on_the_cpu_holds_no_device_constant(tmp_path):
    from facemark.inference.export import export_model

    export_model(_watched_slpt(), tmp_path / "m.ts", "torchscript", layout="wflw98", crop_convention=CROP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch >= 2.10
        loaded = torch.jit.load(str(tmp_path / "m.ts"))
    constants = [line.strip() for line in str(loaded.inlined_graph).splitlines() if "Device = prim::Constant" in line]
    assert constants == []  # a "cpu" constant here makes Predictor("m.ts", device="cuda") fail on its first image


def test_export_bench_and_onnx_predictor_leave_the_callers_model_alone(tmp_path):
    pytest.importorskip("onnxruntime")
    from facemark.inference.export import export_model
    from facemark.inference.predictor import Predictor

    model = _watched_slpt()
    export_model(model, tmp_path / "m.onnx", "onnx", layout="wflw98", crop_convention=CROP)
    export_model(model, tmp_path / "m.ts", "torchscript", layout="wflw98", crop_convention=CROP)
    Predictor(model, backend="onnx", layout="wflw98", crop_convention=CROP, detector=None)
    assert not model.moved and model.training  # not moved to the CPU, not switched to eval mode


# -- the training engine on CUDA: AMP, divergence with fewer synchronisations, kernel switches ------
from types import SimpleNamespace  # noqa: E402

from facemark.engine import train as train_module  # noqa: E402
from facemark.engine.config import ConfigError, config_from_dict  # noqa: E402


def test_runtime_amp_takes_bf16_fp16_and_the_old_booleans():
    for value in (True, False, "fp16", "bf16"):
        assert config_from_dict({"runtime": {"amp": value}}).runtime.amp == value
    with pytest.raises(ConfigError, match="runtime.amp"):
        config_from_dict({"runtime": {"amp": "fp8"}})


class _Scaler:
    def __init__(self, enabled: bool, scale: float):
        self.enabled, self.scale = enabled, scale

    def is_enabled(self):
        return self.enabled

    def get_scale(self):
        return self.scale


def _fake_run(scaler):
    return SimpleNamespace(scaler=scaler, context=distributed.DistributedContext(), logger=SimpleNamespace(error=lambda *a: None),
                           recipe=SimpleNamespace(last_path=__import__("pathlib").Path("/nonexistent/last.pt")))


def test_a_skipped_fp16_overflow_step_does_not_stop_training():
    bad = torch.tensor(3)
    train_module._check_finite(_fake_run(_Scaler(True, 32768.0)), bad, 0, 10, 0)  # the scaler skipped it: go on
    with pytest.raises(train_module.TrainingDiverged, match="epoch 1, step 4 of 10"):
        train_module._check_finite(_fake_run(_Scaler(True, 0.5)), bad, 0, 10, 0)  # non-finite at any scale
    with pytest.raises(train_module.TrainingDiverged):
        train_module._check_finite(_fake_run(_Scaler(False, 1.0)), bad, 0, 10, 0)  # fp32 / bf16: divergence
    train_module._check_finite(_fake_run(_Scaler(False, 1.0)), torch.tensor(-1), 0, 10, 0)


def test_nan_loss_is_caught_between_log_intervals(tmp_path):
    """The loss is read at log intervals only; a NaN in between still stops the run at the end of
    its epoch, naming its step, before the checkpoint (last.pt stays the previous epoch's)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from engine_fixtures import TINY_METHODS, make_wflw_fixture, tiny_config

    from facemark.engine.checkpoint import load_checkpoint

    root = make_wflw_fixture(tmp_path / "data")
    config = tiny_config(root, tmp_path / "run", "optim.epochs=3", "loss.options.nan_after_steps=3", "runtime.log_interval=100")
    with pytest.raises(train_module.TrainingDiverged) as error:
        train_module.train(config, methods=TINY_METHODS)
    assert "epoch 2, step 2 of 2" in str(error.value)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_tf32_is_switched_on_for_cuda_runs():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        config = config_from_dict({"runtime": {"deterministic": False}})
        train_module._set_kernel_switches(config, SimpleNamespace(device=torch.device("cuda", 0)))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def test_sdfl_loss_builds_its_laplacian_once_and_computes_in_float32(monkeypatch):
    import numpy as np

    from facemark.engine.methods import METHODS, TrainingShapes, compute_method_statistics
    from facemark.layouts import get_layout
    from facemark.models import losses
    from facemark.models.sdfl import SDFLOutput

    layout = get_layout("300w68")
    faces = np.random.default_rng(0).random((5, 68, 2))
    shapes = TrainingShapes(original=faces, crop=faces)
    statistics = compute_method_statistics(METHODS["sdfl"], shapes, layout, {})
    built = []
    original = losses.uniform_laplacian
    monkeypatch.setattr(losses, "uniform_laplacian", lambda *a, **k: built.append(1) or original(*a, **k))
    loss = METHODS["sdfl"].build_loss(layout, statistics, 256, relative_weight=1.0)
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 68, 2, generator=generator, dtype=torch.float64).float()
    prediction = torch.rand(2, 68, 2, generator=generator)
    values = [loss(SDFLOutput(prediction), target) for _ in range(3)]
    assert len(built) == 1 and values[0] == values[2]
    # A float16 prediction (autocast) is compared with the float32 target in float32: the same
    # loss as with the float16 values widened by hand, not one computed on a rounded target.
    half = prediction.half()
    from_half = loss(SDFLOutput(half), target)
    assert from_half.dtype == torch.float32
    torch.testing.assert_close(from_half, loss(SDFLOutput(half.float()), target))


def test_slpt_keeps_landmark_coordinates_in_float32_under_autocast():
    # bfloat16 autocast on the CPU stands in for CUDA's fp16 / bf16: the network's matrix products
    # run in low precision, the coordinates (mean face, patch boxes, eq. 7) stay float32.
    torch.manual_seed(0)
    model = build_slpt(TINY, mean_face=load_official_mean_face(98)).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(torch.randn(2, 3, 64, 64))
    assert all(stage.dtype == torch.float32 for stage in output.stages)


def test_small_per_process_batch_without_sync_bn_is_warned_about(caplog):
    import logging

    logger = logging.getLogger("facemark.test_small_batch")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    eight_gpus = distributed.DistributedContext(0, 0, 8, torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger=logger.name):
        train_module._warn_small_batch_norm_batch(config_from_dict({"optim": {"batch_size": 32}}), eight_gpus, model, logger)
        assert "gives each 4 images" in caplog.text and "runtime.sync_bn=true" in caplog.text
        caplog.clear()
        for quiet in ({"optim": {"batch_size": 64}}, {"optim": {"batch_size": 32}, "runtime": {"sync_bn": True}}):
            train_module._warn_small_batch_norm_batch(config_from_dict(quiet), eight_gpus, model, logger)
        train_module._warn_small_batch_norm_batch(config_from_dict({"optim": {"batch_size": 32}}), eight_gpus,
                                                  torch.nn.Linear(2, 2), logger)  # no BatchNorm
        assert caplog.text == ""
