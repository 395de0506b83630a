"""Check and time facemark's GPU path on one CUDA GPU, in one run of a few minutes.

    python benchmarks/gpu_check.py [--json gpu_check.json] [--quick]

Prints one table, each row a check that either ran (with its measurement) or failed (with the
first line of the error); one failure does not stop the others:

- training images/s of the full SLPT recipe (HRNetW18C-lite, 6 layers, 98 points, 256 x 256,
  batch 16): fp32 (TF32 on), AMP fp16, AMP bf16, channels-last, torch.compile;
- the training data loader alone (SynthFace crops with the training augmentation) at 2, 4, 8 and
  16 workers, images/s: if it is below the training rate, the GPU starves;
- inference faces/s at batch 1, 64 and 256, eager and torch.compile (inputs copied from the host
  and results copied back, as a user's batch is);
- a TorchScript export traced on the CPU, loaded onto the GPU and run (no CPU-only constants);
- one DDP training step in a 1-process NCCL group (device_id given, as facemark's engine does);
- the peak GPU memory of the whole run.

Without a CUDA GPU it prints so and exits 0 (tests/test_gpu_check.py runs it that way). The whole
run is sized to finish under 8 minutes on one datacentre GPU (``--quick`` shortens every timing).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

TRAIN_BATCH = 16


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:150] if text else ''}"


def _timed_steps(step, warmup: int, steps: int) -> float:
    """Seconds per call of ``step`` after ``warmup`` calls, timed with a CUDA synchronisation."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def _slpt_training(device, dtype=None, channels_last=False, compile_model=False):
    """A step function of the full SLPT recipe (model, eq. 8 loss, Adam) on random crops."""
    from facemark.layouts import WFLW98
    from facemark.models.slpt import SLPTConfig, build_slpt, load_official_mean_face, slpt_loss

    torch.manual_seed(0)
    model = build_slpt(SLPTConfig(num_points=98), mean_face=load_official_mean_face(98)).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    images = torch.randn(TRAIN_BATCH, 3, 256, 256, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.rand(TRAIN_BATCH, 98, 2, device=device) * 0.5 + 0.25

    def step():
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            output = forward(images)
        loss = slpt_loss(output, targets, WFLW98)  # in float32: coordinates and targets stay fp32
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def check_training(device, quick: bool) -> list[dict]:
    rows = []
    variants = [("fp32 (TF32)", {}), ("AMP fp16", {"dtype": torch.float16}), ("AMP bf16", {"dtype": torch.bfloat16}),
                ("AMP bf16 + channels-last", {"dtype": torch.bfloat16, "channels_last": True}),
                ("AMP bf16 + torch.compile", {"dtype": torch.bfloat16, "compile_model": True})]
    for name, options in variants:
        try:
            start = time.perf_counter()
            step = _slpt_training(device, **options)
            seconds = _timed_steps(step, 3 if options.get("compile_model") else 2, 5 if quick else 20)
            note = f"batch {TRAIN_BATCH}; set-up + warm-up {time.perf_counter() - start - seconds * (5 if quick else 20):.0f} s"
            rows.append({"check": f"train SLPT full, {name}", "value": TRAIN_BATCH / seconds, "unit": "images/s", "note": note})
        except Exception as error:  # noqa: BLE001 (each check reports its own failure)
            rows.append({"check": f"train SLPT full, {name}", "value": None, "unit": "images/s", "note": "FAILED " + _first_line(error)})
        finally:
            torch._dynamo.reset()
    return rows


def check_loader(quick: bool) -> list[dict]:
    """The training loader alone on a SynthFace dataset written to a temporary folder."""
    from facemark.data import load_dataset
    from facemark.data.synthface import generate_dataset
    from facemark.engine.data import CropDataset, model_input, worker_init
    from facemark.data.transforms import AugmentationConfig, slpt_crop_convention

    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        count = 256 if quick else 1024
        generate_dataset(folder, count, 1, seed=0, workers=min(8, os.cpu_count() or 1), progress=False)
        records = load_dataset("wflw", folder, "train")
        dataset = CropDataset(records.records, records.layout, slpt_crop_convention(), AugmentationConfig())
        for workers in (2, 4, 8, 16):
            try:
                loader = torch.utils.data.DataLoader(dataset, batch_size=TRAIN_BATCH, shuffle=True, num_workers=workers,
                                                     worker_init_fn=worker_init, pin_memory=True, drop_last=True,
                                                     persistent_workers=True, prefetch_factor=4)
                iterator = iter(loader)
                next(iterator)  # workers started
                start, images = time.perf_counter(), 0
                for batch in iterator:
                    model_input(batch["image"], dataset.crop, "cuda")  # uint8 copy, normalised on the GPU
                    images += batch["image"].shape[0]
                torch.cuda.synchronize()
                rows.append({"check": f"data loader, {workers} workers", "value": images / (time.perf_counter() - start),
                             "unit": "images/s", "note": f"{os.cpu_count()} CPUs; SynthFace 256 px, training augmentation"})
                del iterator, loader
            except Exception as error:  # noqa: BLE001
                rows.append({"check": f"data loader, {workers} workers", "value": None, "unit": "images/s", "note": "FAILED " + _first_line(error)})
    return rows


def check_inference(device, quick: bool) -> list[dict]:
    from facemark.inference.bench import build_preset

    rows = []
    model = build_preset("slpt")[0].to(device).eval()
    for mode in ("eager", "compile"):
        try:
            forward = torch.compile(model) if mode == "compile" else model
            for batch in (1, 64, 256):
                host = torch.randn(batch, 3, 256, 256).pin_memory()

                def run():
                    with torch.inference_mode():
                        return forward(host.to(device, non_blocking=True)).landmarks.cpu()

                seconds = _timed_steps(run, 3, 5 if quick else (30 if batch == 1 else 10))
                rows.append({"check": f"inference SLPT full, {mode}, batch {batch}", "value": batch / seconds,
                             "unit": "faces/s", "note": "host -> GPU -> host copies included"})
        except Exception as error:  # noqa: BLE001
            rows.append({"check": f"inference SLPT full, {mode}", "value": None, "unit": "faces/s", "note": "FAILED " + _first_line(error)})
        finally:
            torch._dynamo.reset()
    return rows


def check_torchscript_on_gpu(device) -> list[dict]:
    """A TorchScript export traced on the CPU must run on the GPU (no device constants baked in)."""
    from facemark.inference.bench import build_preset
    from facemark.inference.export import export_model
    from facemark.inference.predictor import Predictor

    try:
        model, layout, crop = build_preset("slpt")
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
            path = Path(folder) / "slpt.ts"
            export_model(model, path, "torchscript", layout=layout.name, crop_convention=crop)
            crops = torch.randn(4, 3, 256, 256).numpy()
            on_gpu = Predictor(path, device=str(device), detector=None, trust_torchscript=True).predict_crops(crops)
            on_cpu = Predictor(path, device="cpu", detector=None, trust_torchscript=True).predict_crops(crops)
        difference = float(abs(on_gpu - on_cpu).max() * crop.size)
        return [{"check": "TorchScript traced on CPU, run on GPU", "value": difference, "unit": "max px vs CPU", "note": "ok" if difference < 0.05 else "LARGE"}]
    except Exception as error:  # noqa: BLE001
        return [{"check": "TorchScript traced on CPU, run on GPU", "value": None, "unit": "", "note": "FAILED " + _first_line(error)}]


def check_ddp(device) -> list[dict]:
    """One DDP step in a 1-process NCCL group, joined as facemark's engine joins it."""
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    try:
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
        try:
            step_model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(256, 196).to(device), device_ids=[device.index])
            optimizer = torch.optim.SGD(step_model.parameters(), lr=0.1)

            def step():
                loss = step_model(torch.randn(64, 256, device=device)).square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

            seconds = _timed_steps(step, 2, 10)
            return [{"check": "DDP step, 1 process, NCCL", "value": seconds * 1e3, "unit": "ms/step", "note": f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"}]
        finally:
            dist.destroy_process_group()
    except Exception as error:  # noqa: BLE001
        return [{"check": "DDP step, 1 process, NCCL", "value": None, "unit": "ms/step", "note": "FAILED " + _first_line(error)}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps everywhere (a smoke run)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU is available to torch {torch.__version__} (torch.cuda.is_available() is False); nothing to check.")
        return 0
    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True  # as facemark's training engine sets them on CUDA
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    rows = []
    rows += check_training(device, args.quick)
    rows += check_loader(args.quick)
    rows += check_inference(device, args.quick)
    rows += check_torchscript_on_gpu(device)
    rows += check_ddp(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    rows.append({"check": "peak GPU memory (whole run)", "value": peak, "unit": "GiB", "note": "torch.cuda.max_memory_allocated"})
    total = time.perf_counter() - start
    print(f"GPU {torch.cuda.get_device_name(device)}; torch {torch.__version__}, CUDA {torch.version.cuda}; {os.cpu_count()} CPUs; {total:.0f} s")
    print(f"| {'check':44s} | {'value':>10s} | {'unit':14s} | note")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 16}|------")
    for row in rows:
        value = "" if row["value"] is None else f"{row['value']:.4g}" if row["value"] < 1 else f"{row['value']:.1f}"
        print(f"| {row['check']:44s} | {value:>10s} | {row['unit']:14s} | {row['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
                                               "seconds": total, "rows": rows}, indent=1))
    failed = [row for row in rows if str(row["note"]).startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
