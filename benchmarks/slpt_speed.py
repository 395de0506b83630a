"""SLPT speed and size: facemark's SLPT against a re-implementation of the authors' approach
(``benchmarks/slpt_reference.py``: Python loop over the batch, index_select sampling, Conv2d
patch embedding, nn.MultiheadAttention), measured in the same run, same weights, same input.

    .venv/bin/python benchmarks/slpt_speed.py --threads 2

Prints parameters, FLOPs (torch.utils.flop_counter) and multiply-adds (fvcore-style, as the
paper's Table 8), the max abs difference of the two models' outputs, CPU latency at batch 1,
throughput at batch 16 and the time of one training step (Adam) at batch 8, with the
facemark / reference ratios. Timings alternate between the two models run by run so that load
from other processes hits both alike; medians are reported.

Output differences depend on the weights and the input: the default model has random weights
(kaiming-normal convs, BatchNorm statistics calibrated on noise) and a noise image, which
amplify float rounding far more than trained weights on a face do. ``--weights CHECKPOINT`` (a
facemark SLPT checkpoint or an authors' release file) adds the same comparison for trained
weights on SynthFace face crops rendered on the fly (nothing is read from disk but the file).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slpt_reference import ReferenceSLPT  # noqa: E402

from facemark.models.complexity import measure_complexity  # noqa: E402
from facemark.models.official_slpt import to_official_state_dict  # noqa: E402
from facemark.models.slpt import SLPT, SLPTConfig, SLPTOutput, build_slpt, slpt_loss  # noqa: E402


def alternate_timings(functions: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for function in functions.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def calibrated_models(num_points: int, num_layers: int):
    """facemark SLPT with realistic random weights (BN statistics from a forward pass) and the
    reference holding the same weights in the release's layout."""
    torch.manual_seed(0)
    model = build_slpt(SLPTConfig(num_points=num_points, num_layers=num_layers),
                       mean_face=torch.rand(num_points, 2) * 0.6 + 0.2)
    for name, parameter in model.backbone.named_parameters():
        if parameter.dim() > 1:
            torch.nn.init.kaiming_normal_(parameter)
    batch_norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.momentum = 1.0
    model.backbone.train()
    with torch.no_grad():
        model.backbone(torch.randn(2, 3, 256, 256))
    for bn in batch_norms:
        bn.momentum = 0.01
    reference = ReferenceSLPT(model.mean_face, num_layers=num_layers)
    reference.load_state_dict(to_official_state_dict(model), strict=True)
    return model.eval(), reference.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--points", type=int, default=98)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs at batch 1 (per model)")
    parser.add_argument("--throughput-repeats", type=int, default=3)
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true", help="skip the training-step timing")
    parser.add_argument("--skip-inference", action="store_true", help="skip latency and throughput")
    parser.add_argument("--weights", type=Path, help="also compare outputs for these trained weights (facemark "
                        "SLPT checkpoint or authors' file) on SynthFace face crops")
    parser.add_argument("--faces", type=int, default=8, help="SynthFace faces for --weights (default 8)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.points} points, {args.layers} layers")

    model, reference = calibrated_models(args.points, args.layers)
    fast = copy.deepcopy(model)
    fast.channels_last = True  # facemark's speed setting (see SLPT's docstring)
    image = torch.randn(1, 3, 256, 256)

    # -- size and compute ---------------------------------------------------------------------
    for name, module in (("facemark", model), ("reference", reference)):
        report = measure_complexity(module, image)
        print(f"{name:9s}: params {report.parameters:,}  flop_counter {report.flops / 1e9:.4f} GFLOP  "
              f"multiply-adds (fvcore-style) {report.multiply_adds / 1e9:.4f} G")

    # -- identical outputs --------------------------------------------------------------------
    with torch.inference_mode():
        theirs = reference(image)
        for name, module in (("facemark", model), ("facemark channels_last", fast)):
            difference = max(float((a - b).abs().max()) for a, b in zip(module(image).stages, theirs))
            print(f"max |{name} - reference| over all stages and layers: {difference:.2e}")

    if args.weights is not None:
        compare_trained(args.weights, args.faces)

    # -- latency, throughput, training step -----------------------------------------------------
    if not args.skip_inference:
        time_inference(model, fast, reference, image, args)
    if not args.skip_train:
        time_training(model, reference, args)


def synthface_crops(count: int, size: int) -> torch.Tensor:
    """``count`` SynthFace test faces (seed 0) cropped with SLPT's convention, ImageNet-normalised."""
    from facemark.data.synthface import render_sample
    from facemark.data.transforms import crop_matrix, face_box, image_to_tensor, slpt_crop_convention, warp_image

    convention = slpt_crop_convention(size)
    crops = []
    for index in range(count):
        face = render_sample(0, "test", index, size=size)
        box = face_box(convention, landmarks=face.landmarks["wflw98"])
        crops.append(image_to_tensor(warp_image(face.image, crop_matrix(box, size), size)))
    return torch.stack(crops)


def compare_trained(path: Path, faces: int) -> None:
    """Max output differences (facemark NCHW / channels_last vs the reference) for trained weights."""
    from facemark.engine.checkpoint import load_model
    from facemark.inference.predictor import weights_kind
    from facemark.models.official_slpt import load_official_slpt

    model = load_official_slpt(path) if weights_kind(path) == "official_slpt" else load_model(path).model
    if not isinstance(model, SLPT):
        raise SystemExit(f"--weights {path}: not an SLPT checkpoint ({type(model).__name__})")
    config = model.config
    released = (config.backbone, config.embed_dim, config.num_heads, config.feedforward_dim, config.initial_patch_size)
    if released != ("hrnet_w18c_lite", 256, 8, 1024, 0.25):
        raise SystemExit(f"--weights {path}: the reference is the release's architecture (HRNetW18C-lite, d 256, "
                         f"8 heads, FFN 1024, initial patch 0.25); this model has {released}")
    reference = ReferenceSLPT(model.mean_face, num_layers=config.num_layers, num_stages=config.num_stages,
                              patch_samples=config.patch_samples).eval()
    reference.load_state_dict(to_official_state_dict(model), strict=True)
    fast = copy.deepcopy(model)
    fast.channels_last = True
    images = synthface_crops(faces, 256)
    with torch.inference_mode():
        theirs = reference(images)
        for name, module in (("facemark", model), ("facemark channels_last", fast)):
            difference = max(float((a - b).abs().max()) for a, b in zip(module(images).stages, theirs))
            print(f"{path.name}, {faces} SynthFace crops: max |{name} - reference| = {difference:.2e}")


def time_inference(model, fast, reference, image, args) -> None:
    """Latency at batch 1 and throughput at batch 16, inference_mode, the three alternating."""
    contenders = {"facemark": model, "facemark channels_last": fast, "reference": reference}
    with torch.inference_mode():
        times = alternate_timings({name: (lambda m=m: m(image)) for name, m in contenders.items()},
                                  args.repeats, warmup=3)
        backbone_times = alternate_timings({"NCHW": lambda: model.backbone(image),
                                            "channels_last": lambda: model.backbone(
                                                image.contiguous(memory_format=torch.channels_last))}, 5, 1)
    reference_ms = statistics.median(times["reference"]) * 1e3
    reference_min = min(times["reference"]) * 1e3
    print(f"latency batch 1, ms (median / min of {args.repeats} runs, alternating):")
    for name in contenders:
        median_ms, min_ms = statistics.median(times[name]) * 1e3, min(times[name]) * 1e3
        print(f"  {name:24s} {median_ms:7.1f} / {min_ms:7.1f}   speed-up vs reference x{reference_ms / median_ms:.2f} "
              f"(median) x{reference_min / min_ms:.2f} (min)")
    print("  backbone alone: " + ", ".join(f"{k} {statistics.median(v) * 1e3:.1f}" for k, v in backbone_times.items()))

    batch = torch.randn(16, 3, 256, 256)
    with torch.inference_mode():
        times = alternate_timings({name: (lambda m=m: m(batch)) for name, m in contenders.items()},
                                  args.throughput_repeats, warmup=1)
    print("throughput batch 16, img/s (median): " + ", ".join(
        f"{name} {16 / statistics.median(times[name]):.1f}" for name in contenders))


def time_training(model, reference, args) -> None:
    """One Adam step (forward, eq. 8 loss, backward, update) at batch 8, both models."""
    images = torch.randn(8, 3, 256, 256)
    target = torch.rand(8, args.points, 2) * 0.6 + 0.2
    inter_ocular = (0, 1)
    model.train()
    reference.train()
    optimisers = {"facemark": torch.optim.Adam(model.parameters(), lr=1e-4),
                  "reference": torch.optim.Adam(reference.parameters(), lr=1e-4)}

    def step(name: str) -> None:
        optimiser = optimisers[name]
        optimiser.zero_grad(set_to_none=True)
        output = model(images) if name == "facemark" else SLPTOutput(reference(images))
        slpt_loss(output, target, inter_ocular).backward()
        optimiser.step()

    times = alternate_timings({"facemark": lambda: step("facemark"), "reference": lambda: step("reference")},
                              args.train_repeats, warmup=1)
    ours_s, theirs_s = (statistics.median(times[k]) for k in ("facemark", "reference"))
    print(f"training step batch 8 (Adam): facemark {ours_s:.2f} s, reference {theirs_s:.2f} s, "
          f"x{theirs_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
