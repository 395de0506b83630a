"""``facemark demo``: the whole toolkit in one command, on built-in data only (nothing is downloaded).

What it does, in order (every step shows progress):

1. Generate a SynthFace dataset (WFLW format, 98 points) in ``<out>/data`` -- or reuse the one
   there if its ``synthface.json`` records exactly the requested seed, size and split sizes.
2. Train the two papers' methods and their common baseline with the SAME WALL-CLOCK BUDGET each
   (``minutes``): SLPT with the light preset ``configs/synthface_slpt_fast.yaml`` (half-width
   MobileNetV2 backbone, 128 crops, 2 stages, 1 layer of width 128, K = 4, channels-last), SDFL's
   graph head ``configs/synthface_sdfl_cpu.yaml`` (ResNet18, dynamic adjacency, k = 3, Soft Wing +
   relative location loss) and the FC-regression baseline ``configs/synthface_fc_cpu.yaml``
   (ResNet18 + FC head, Soft Wing; SDFL Table I's baseline). A few real training steps of each model
   are timed first and the number of epochs is the most that fit in the budget; the learning
   rate drops x0.1 for the last eighth of the epochs (at least the last one). A faster
   machine (a GPU) therefore trains more epochs in the same time: a better model, not a
   shorter demo.
3. Evaluate the three on the test split exactly as ``facemark evaluate`` does (crops from the
   checkpoint's convention, predictions mapped back to the original images), next to the
   mean-shape baseline: SLPT's initial landmarks S_0 (the mean face of the training crops) placed
   in each test crop and mapped back.
4. Write ``<out>/report.md``: the comparison table in the papers' layout, SLPT's NME per stage,
   the CED plot of the four (``ced.png``) and a grid of the same test faces with SLPT's and SDFL's
   predictions side by side and the ground truth (``predictions.png``). Print the table and the
   report path.

All runs use ``data.val_fraction`` = 0.1 of the training split for best-epoch selection (the
engine's default); the test split is only used for the final numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["DemoSettings", "DemoResult", "run_demo", "add_demo_arguments", "mean_shape_predictions",
           "stage_predictions", "prediction_grid", "CONFIG_DIR"]

# The recipes the demo trains (repository's configs/ folder; the demo overrides paths, budget and device).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# key -> recipe, in the order they are trained and reported; every model gets the same budget.
RECIPES = {"slpt": "synthface_slpt_fast.yaml", "sdfl": "synthface_sdfl_cpu.yaml", "fc": "synthface_fc_cpu.yaml"}
MODEL_NAMES = {"slpt": "SLPT (MobileNetV2-0.5, fast)", "sdfl": "SDFL graph head (ResNet18)",
               "fc": "FC baseline (ResNet18)", "mean": "Mean shape"}


@dataclass
class DemoSettings:
    """Arguments of :func:`run_demo` (the ``facemark demo`` options).

    ``minutes``: training budget PER MODEL (SLPT, SDFL and the FC baseline get the same wall-clock
    budget; the whole demo takes about 3 x ``minutes`` plus a minute). ``max_epochs`` caps the epochs on fast machines. ``calibration_steps``: training steps
    timed per model to turn the budget into epochs. ``image_size``: SynthFace image side, also the
    crop side of the three models.
    """

    out_dir: str = "runs/demo"
    minutes: float = 4.5
    seed: int = 0
    device: str = "auto"
    num_train: int = 2000
    num_test: int = 500
    image_size: int = 128
    max_epochs: int = 60
    calibration_steps: int = 12
    workers: int | None = None  # data-loading processes (None: 1 on CPU, up to 8 on CUDA)
    progress: bool = True
    grid_faces: int = 16
    overrides: Sequence[str] = ()  # extra key=value overrides applied to every training config


@dataclass
class DemoResult:
    """What the demo produced: the results per model, the report's files, the timings."""

    results: dict  # model name -> facemark.metrics.EvaluationResults
    stage_nmes: list[float]  # SLPT test NME (inter-ocular, original image) after each stage
    epochs: dict  # "slpt"/"sdfl"/"fc" -> epochs trained
    train_seconds: dict  # "slpt"/"sdfl"/"fc" -> wall-clock seconds of training
    total_seconds: float
    report: Path
    ced_plot: Path
    grid_image: Path
    table: str
    extra: dict = field(default_factory=dict)


def _say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message)


# -- 1. data ------------------------------------------------------------------------------------
def _dataset_matches(root: Path, settings: DemoSettings) -> bool:
    """Whether ``root`` holds a complete SynthFace set made with exactly these arguments."""
    summary_path = root / "synthface.json"
    if not summary_path.is_file():
        return False
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError:
        return False
    splits = summary.get("splits", {})
    return (summary.get("format") == "wflw" and summary.get("seed") == settings.seed
            and summary.get("size") == settings.image_size
            and splits.get("train", {}).get("images") == settings.num_train
            and splits.get("test", {}).get("images") == settings.num_test)


def _prepare_dataset(root: Path, settings: DemoSettings, workers: int) -> str:
    from facemark.data.synthface import generate_dataset

    if _dataset_matches(root, settings):
        return f"reusing {root} (its synthface.json matches seed {settings.seed}, size {settings.image_size}, " \
               f"{settings.num_train} train / {settings.num_test} test)"
    if root.exists():
        if not (root / "synthface.json").is_file() and any(root.iterdir()):
            raise FileExistsError(f"{root} exists and is not a SynthFace dataset (no synthface.json); "
                                  "the demo will not overwrite it: choose another --out")
        shutil.rmtree(root)  # a SynthFace set with other arguments (or an interrupted one): regenerate
    generate_dataset(root, num_train=settings.num_train, num_test=settings.num_test, seed=settings.seed,
                     size=settings.image_size, format="wflw", workers=workers, progress=settings.progress)
    return f"generated {root}: {settings.num_train} train + {settings.num_test} test images, " \
           f"{settings.image_size} px, seed {settings.seed}"


# -- 2. training with a time budget ---------------------------------------------------------------
def _remove_previous_run(run_dir: Path) -> None:
    """The demo's own run folders are rewritten on every demo (never reused silently)."""
    if not run_dir.exists():
        return
    if not ((run_dir / "config.yaml").is_file() or (run_dir / "last.pt").is_file() or not any(run_dir.iterdir())):
        raise FileExistsError(f"{run_dir} exists and is not a facemark run; the demo will not delete it: "
                              "choose another --out")
    shutil.rmtree(run_dir)


def measure_seconds_per_image(config, device, steps: int) -> float:
    """Wall-clock seconds per training image of ``config``'s model on ``device``.

    The median over ``steps`` real optimisation steps (augmented crops from the training split
    through the run's data loader, loss, backward, optimiser step) after one warm-up step, with the
    run's batch size. A step is timed from the end of the one before, so waiting for the loader's
    workers (which share the CPU with the model) counts: timing the model alone said 25.7 img/s
    where SLPT's training ran at 22-23 img/s, and the run overshot its budget by 25 %. The model
    is thrown away afterwards.
    """
    import torch

    from facemark.data import load_dataset
    from facemark.data.transforms import CropConvention
    from facemark.engine.data import CropDataset, WorkerLoader, model_input, training_shapes
    from facemark.engine.methods import METHODS, compute_method_statistics, get_method
    from facemark.engine.train import _augmentation, build_optimizer

    method = get_method(config.model.method, METHODS)
    crop = CropConvention(**config.data.crop.__dict__)
    dataset = load_dataset(config.data.dataset, config.data.root, config.data.train_split)
    layout = dataset.layout
    batch_size = config.optim.batch_size
    count = min(len(dataset), batch_size * (steps + 1))
    shapes = training_shapes(dataset, crop)
    statistics = compute_method_statistics(method, shapes, layout, config.model.options)
    model = method.build_model(config.model.backbone, layout, statistics, crop.size, **config.model.options)
    model.to(device).train()
    image_format = torch.channels_last if config.runtime.channels_last else torch.preserve_format
    if config.runtime.channels_last:  # as in training (facemark.engine.train)
        model.to(memory_format=torch.channels_last)
    loss_function = method.build_loss(layout, statistics, crop.size, **config.loss.options)
    optimizer = build_optimizer(model.parameters(), config)
    data = CropDataset(dataset.records[:count], layout, crop, _augmentation(config), seed=config.runtime.seed)
    loader = WorkerLoader(data, batch_size=batch_size, shuffle=False, drop_last=True, num_workers=config.data.workers,
                          pin_memory=device.type == "cuda")
    use_amp = config.runtime.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step_seconds = []  # per image, of each timed step
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            images = model_input(batch["image"], crop, device, image_format)
            loss = loss_function(model(images), batch["target"].to(device))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        end = time.perf_counter()
        if step >= 1:  # step 0 is the warm-up (worker start, allocations, oneDNN / cuDNN kernel choice)
            step_seconds.append((end - start) / batch["image"].shape[0])
        start = end
    if not step_seconds:
        raise ValueError(f"the training split of {config.data.root} has too few faces to time "
                         f"{steps} steps of batch {batch_size}")
    # The median step: one step slowed down by another program on the machine does not count.
    return float(np.median(step_seconds))


def epochs_for_budget(budget_seconds: float, seconds_per_image: float, train_images: int,
                      val_images: int, max_epochs: int) -> int:
    """The most epochs that fit in ``budget_seconds`` (never more, so the demo's total time holds;
    a run may end up to one epoch before its budget): an epoch trains ``train_images`` and
    validates ``val_images`` (a forward pass costs about a third of a training step). At least 1,
    at most ``max_epochs``."""
    epoch_seconds = seconds_per_image * (train_images + val_images / 3.0)
    return int(max(1, min(max_epochs, math.floor(budget_seconds / epoch_seconds))))


def lr_drop_epoch(epochs: int) -> int:
    """The epoch after which the demo's lr drops x0.1 in a plan of ``epochs`` (>= 2): for the last
    eighth of the plan, at least its last epoch. Measured on the demo's data (docs/experiments.md): in 8
    epochs, a drop for the last epoch only gave SLPT 10.29 % test NME_io against 10.80 % for the
    last quarter (2 epochs), and a cosine decay 13.72 %: the short runs need the high rate for as
    long as possible, then one sharp drop."""
    if epochs < 2:
        raise ValueError(f"an lr drop needs a plan of at least 2 epochs, got {epochs}")
    return epochs - max(1, round(epochs / 8))


def _train_with_budget(name: str, config_file: str, root: Path, run_dir: Path, settings: DemoSettings,
                       device, workers: int) -> tuple:
    from facemark.engine.config import load_config
    from facemark.engine.train import train

    overrides = [f"data.root={root}", f"data.crop.size={settings.image_size}", f"data.workers={workers}",
                 f"runtime.output_dir={run_dir}", f"runtime.device={device}", f"runtime.seed={settings.seed}",
                 f"runtime.progress={str(settings.progress).lower()}", "runtime.tensorboard=false",
                 *settings.overrides]
    config = load_config(CONFIG_DIR / config_file, overrides)
    _say(f"  timing {settings.calibration_steps} training steps of {name} ...")
    seconds_per_image = measure_seconds_per_image(config, device, settings.calibration_steps)
    val_images = int(round(config.data.val_fraction * settings.num_train)) if config.data.val_fraction > 0 else 0
    train_images = settings.num_train - val_images
    train_images -= train_images % config.optim.batch_size  # the loader drops the last partial batch
    epochs = epochs_for_budget(60.0 * settings.minutes, seconds_per_image, train_images, val_images,
                               settings.max_epochs)
    # The timing of a few steps was off by up to 25 % either way on a shared machine, so it only
    # sets an upper limit: 1.5x the epochs it says fit. The engine's time budget re-fits the plan
    # to the measured epochs after each one, and keeps the lr drop (x0.1) at the same fraction of
    # that plan (lr_drop_epoch).
    limit = min(settings.max_epochs, max(epochs + 1, math.ceil(1.5 * epochs)))
    milestones = [lr_drop_epoch(limit)] if limit >= 2 else []
    config = load_config(CONFIG_DIR / config_file, overrides + [f"optim.epochs={limit}",
                                                                  f"optim.milestones={milestones}",
                                                                  f"optim.time_budget_minutes={settings.minutes}"])
    _say(f"  {name}: {1.0 / seconds_per_image:.1f} training images/s -> about {epochs} epoch(s) of {train_images} "
         f"faces in the {settings.minutes:g}-minute budget (at most {limit}; the plan follows the measured "
         "epochs, lr x0.1 for its last eighth, at least its last epoch)")
    start = time.perf_counter()
    result = train(config)
    return result, result.epochs_completed, time.perf_counter() - start, config


# -- 3. evaluation helpers ------------------------------------------------------------------------
def mean_shape_predictions(mean_face: np.ndarray, records, crop) -> np.ndarray:
    """The mean-shape baseline: ``mean_face`` (N, 2, normalised crop coordinates) placed in each
    record's crop (the same crop convention as the models) and mapped back to the original image.
    Returns (n, N, 2) original-image pixels."""
    from facemark.data.transforms import crop_matrix, crop_to_image, record_face_box

    crop_pixels = np.asarray(mean_face, dtype=np.float64) * crop.size
    return np.stack([crop_to_image(crop_pixels, crop_matrix(record_face_box(record, crop), crop.size))
                     for record in records])


def stage_predictions(model, records, layout, crop, device, batch_size: int = 32, workers: int = 0) -> np.ndarray:
    """SLPT's prediction after each stage (last layer), mapped back to the original images:
    (num_stages, n, N, 2) pixels. Same crops and mapping as ``predict_landmarks``."""
    import torch

    from facemark.data.transforms import crop_to_image
    from facemark.engine.data import CropDataset, WorkerLoader, model_input

    loader = WorkerLoader(CropDataset(records, layout, crop), batch_size=batch_size, shuffle=False, num_workers=workers)
    stages = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                output = model(model_input(batch["image"], crop, device))
                if stages is None:
                    stages = np.full((len(output.stages), len(records), layout.num_points, 2), np.nan)
                index = batch["index"].numpy()
                for s, stage in enumerate(output.stages):
                    pixels = stage[:, -1].double().cpu().numpy() * crop.size
                    stages[s, index] = crop_to_image(pixels, batch["matrix"].numpy())
    finally:
        model.train(was_training)
    return stages


def prediction_grid(records, predictions: np.ndarray, nmes: np.ndarray, layout, columns: int = 4,
                    cell_size: int = 256, labels: Sequence[str] | None = None) -> np.ndarray:
    """Test faces with the ground truth (green dots) and the predictions (red, with the face's
    outline edges), each labelled with its inter-ocular NME (after ``labels[i]``, e.g. the
    model's name, when given); an RGB image."""
    import cv2

    from facemark.visualize import draw_landmarks, image_grid

    cells = []
    labels = list(labels) if labels is not None else [""] * len(records)
    if len(labels) != len(records):
        raise ValueError(f"prediction_grid: {len(labels)} labels for {len(records)} faces")
    for record, predicted, error, label in zip(records, predictions, nmes, labels):
        image = record.load_image()
        scale = cell_size / max(image.shape[:2])
        image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                           interpolation=cv2.INTER_LINEAR)

        # Pixel centres: x' = (x + 0.5) * scale - 0.5 (landmarks are 0-based, integer = pixel centre).
        def to_cell(points: np.ndarray) -> np.ndarray:
            return (np.asarray(points) + 0.5) * scale - 0.5

        image = draw_landmarks(image, to_cell(record.landmarks), layout, colour=(0, 230, 0), radius=2, edges=False)
        image = draw_landmarks(image, to_cell(predicted), layout, colour=(255, 40, 40), radius=1, edges=True)
        cv2.putText(image, f"{label + ' ' if label else ''}NME {100 * error:.1f}%", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
        cells.append(image)
    return image_grid(cells, columns=columns, cell_size=cell_size)


# -- the demo --------------------------------------------------------------------------------------
def run_demo(settings: DemoSettings | None = None) -> DemoResult:
    """Run the whole demo (see the module docstring) and return what it produced."""
    import cv2
    import torch

    from facemark.data import load_dataset
    from facemark.engine.checkpoint import load_model
    from facemark.engine.distributed import resolve_device
    from facemark.engine.evaluate import box_source_label, evaluate, load_predictions
    from facemark.metrics import EvaluationResults, compare_markdown, compare_table, nme, plot_ced

    settings = settings or DemoSettings()
    if settings.minutes <= 0:
        raise ValueError(f"--minutes must be > 0, got {settings.minutes}")
    for name in ("num_train", "num_test"):
        if getattr(settings, name) < 1:
            raise ValueError(f"--{name.replace('num_', '')} must be >= 1, got {getattr(settings, name)}")
    total_start = time.perf_counter()
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(settings.device)
    threads = torch.get_num_threads()
    workers = settings.workers if settings.workers is not None else (min(8, max(1, (torch.multiprocessing.cpu_count() or 2) - 1))
                                                                     if device.type == "cuda" else 1)
    _say(f"facemark demo: device {device}, {settings.minutes:g} training minute(s) per model, output {out_dir}")

    # 1. data
    root = out_dir / "data"
    _say("[1/4] SynthFace data")
    # One rendering process on CPU: SynthFace renders ~100 img/s per core at 128 px, so a pool
    # saves seconds only, and forking a process that already runs torch threads can deadlock.
    _say("  " + _prepare_dataset(root, settings, workers=workers if device.type == "cuda" else 1))

    # 2. training
    runs = {}
    for key, config_file in RECIPES.items():
        _say(f"[2/4] training {MODEL_NAMES[key]} ({config_file})")
        run_dir = out_dir / key
        _remove_previous_run(run_dir)
        runs[key] = _train_with_budget(MODEL_NAMES[key], config_file, root, run_dir, settings, device, workers)
        _say(f"  {MODEL_NAMES[key]} trained in {runs[key][2] / 60:.1f} min")

    # 3. evaluation
    _say("[3/4] evaluating on the SynthFace test split")
    test = load_dataset("wflw", root, "test")
    results: dict[str, EvaluationResults] = {}
    loaded = {}
    for key in RECIPES:
        result = runs[key][0]
        checkpoint = result.best_checkpoint or result.last_checkpoint
        evaluation = evaluate(checkpoint, root, dataset="wflw", split="test", output_dir=out_dir / key / "eval_test",
                              device=str(device), workers=workers, progress=settings.progress)
        evaluation.model = MODEL_NAMES[key]
        results[MODEL_NAMES[key]] = evaluation
        loaded[key] = load_model(checkpoint, device=device)
    slpt = loaded["slpt"]
    mean_face = slpt.model.mean_face.detach().cpu().numpy()
    mean_predictions = mean_shape_predictions(mean_face, test.records, slpt.crop)
    results[MODEL_NAMES["mean"]] = EvaluationResults.from_predictions(
        mean_predictions, test, model_name=MODEL_NAMES["mean"], box_source=box_source_label(slpt.crop))
    stages = stage_predictions(slpt.model, test.records, test.layout, slpt.crop, device, workers=0)
    stage_nmes = [float(nme(stage, test.landmarks(), test.layout, "inter_ocular").mean()) for stage in stages]

    # 4. report
    _say("[4/4] writing the report")
    ordered = {MODEL_NAMES[key]: results[MODEL_NAMES[key]] for key in (*RECIPES, "mean")}
    ced_path = plot_ced({name: r.per_image("inter_ocular") for name, r in ordered.items()}, out_dir / "ced.png",
                        threshold=0.10, title=f"CED on SynthFace test ({len(test)} faces)")
    # The first test faces of the split (a random sample of the generator): not cherry-picked.
    # Each face twice, side by side: SLPT's prediction, then SDFL's.
    shown = list(range(min(settings.grid_faces // 2, len(test))))
    # SDFL's predictions as its evaluation wrote them (not computed a second time).
    written = load_predictions(out_dir / "sdfl" / "eval_test" / "predictions.json")
    by_identifier = dict(zip(written.identifiers, written.landmarks))
    sdfl_predictions = np.stack([by_identifier[record.identifier] for record in test.records])
    compared = {"SLPT": (stages[-1], ordered[MODEL_NAMES["slpt"]]),
                "SDFL": (sdfl_predictions, ordered[MODEL_NAMES["sdfl"]])}
    grid_records, grid_predictions, grid_nmes, grid_labels = [], [], [], []
    for index in shown:
        for label, (predictions, evaluation) in compared.items():
            grid_records.append(test.records[index])
            grid_predictions.append(predictions[index])
            grid_nmes.append(evaluation.per_image("inter_ocular")[index])
            grid_labels.append(label)
    grid = prediction_grid(grid_records, np.stack(grid_predictions), np.array(grid_nmes), test.layout,
                           labels=grid_labels)
    grid_path = out_dir / "predictions.png"
    cv2.imwrite(str(grid_path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    total_seconds = time.perf_counter() - total_start
    table = compare_table(ordered)
    epochs = {key: runs[key][1] for key in runs}
    train_seconds = {key: runs[key][2] for key in runs}
    report_path = out_dir / "report.md"
    report_path.write_text(_report_markdown(
        settings, device, threads, ordered, compare_markdown(ordered), stage_nmes, epochs, train_seconds, runs,
        total_seconds, test))
    summary = {
        "total_seconds": total_seconds, "device": str(device), "epochs": epochs, "train_seconds": train_seconds,
        "stage_nme_inter_ocular": stage_nmes,
        "models": {name: r.summary() for name, r in ordered.items()},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return DemoResult(results=ordered, stage_nmes=stage_nmes, epochs=epochs, train_seconds=train_seconds,
                      total_seconds=total_seconds, report=report_path, ced_plot=ced_path, grid_image=grid_path,
                      table=table)


def _report_markdown(settings, device, threads, results, table_markdown, stage_nmes, epochs, train_seconds, runs,
                     total_seconds, test) -> str:
    slpt_name, sdfl_name, mean_name = (MODEL_NAMES[k] for k in ("slpt", "sdfl", "mean"))
    slpt_nme = results[slpt_name].per_image("inter_ocular").mean()
    sdfl_nme = results[sdfl_name].per_image("inter_ocular").mean()
    fc_nme = results[MODEL_NAMES["fc"]].per_image("inter_ocular").mean()
    mean_nme = results[mean_name].per_image("inter_ocular").mean()
    subsets = results[slpt_name].subsets
    lines = [
        "# facemark demo",
        "",
        f"SynthFace (built-in synthetic faces, WFLW format, 98 points): {settings.num_train} training and "
        f"{len(test)} test images of {settings.image_size} px, seed {settings.seed}. Device: {device}"
        + (f" ({threads} threads)" if device.type == "cpu" else "") + f". Total time: {total_seconds / 60:.1f} min.",
        "",
        "| model | recipe | budget | epochs | training time | best epoch (validation NME) |",
        "|---|---|---|---:|---:|---|",
    ]
    for key, config_file in RECIPES.items():
        result = runs[key][0]
        best = (f"{result.best_epoch} ({100 * result.best_metric:.2f} %)" if result.best_metric is not None
                else str(result.best_epoch))
        lines.append(f"| {MODEL_NAMES[key]} | `configs/{config_file}` | {settings.minutes:g} min | {epochs[key]} | "
                     f"{train_seconds[key] / 60:.1f} min | {best} |")
    lines += [
        f"| {mean_name} | SLPT's initial landmarks S_0 (mean training crop shape) in each test crop | - | - | - | - |",
        "",
        "The three trained models got the same wall-clock budget (a few steps of each were timed and the "
        "plan of epochs was re-fitted to the budget after every epoch from the measured epoch times, with lr x0.1 "
        "for the last eighth of the plan, at least its last epoch). The best "
        "epoch is chosen on 10 % of the training split held out; the test split is used only here. "
        "All models crop the face with the same convention (square 1.2 x the tight ground-truth landmark "
        "box, SLPT's), and predictions are scored in the original images.",
        "",
        "## Results on the test split",
        "",
        table_markdown,
        "",
        f"SLPT's NME_io is {100 * slpt_nme:.2f} % against {100 * mean_nme:.2f} % for the mean shape "
        f"(ratio {slpt_nme / mean_nme:.3f}; the demo's target, at most 1/3, is "
        f"{'met' if slpt_nme <= mean_nme / 3 else 'NOT met'}).",
        "",
        f"SDFL's graph head: NME_io {100 * sdfl_nme:.2f} % against {100 * fc_nme:.2f} % for the FC head on the "
        "same backbone, loss and budget (SDFL Table I's comparison).",
        "",
        "SLPT's NME_io after each coarse-to-fine stage (last layer): "
        + ", ".join(f"stage {s + 1}: {100 * v:.2f} %" for s, v in enumerate(stage_nmes)) + ".",
        "",
    ]
    if subsets:
        per = results[slpt_name].per_image("inter_ocular")
        rows = [f"| {name} | {mask.sum()} | {100 * per[mask].mean():.2f} | {100 * per[~mask].mean():.2f} |"
                for name, mask in subsets.items() if mask.any() and (~mask).any()]
        lines += ["SLPT per subset (NME_io %, the subset vs the rest of the test split):", "",
                  "| subset | faces | subset | rest |", "|---|---:|---:|---:|", *rows, ""]
    lines += [
        "## Cumulative error distribution",
        "",
        "![CED of the four](ced.png)",
        "",
        "## SLPT and SDFL on the same test faces",
        "",
        f"The first {len(test) if len(test) < settings.grid_faces // 2 else settings.grid_faces // 2} test "
        "images of the split (not selected), each twice side by side: SLPT's prediction, then SDFL's "
        f"({sdfl_name}), in red with the face outline; ground truth green dots; the model and the face's "
        "inter-ocular NME at the top left.",
        "",
        "![SLPT and SDFL predictions (red) and ground truth (green)](predictions.png)",
        "",
        "Files: `slpt/`, `sdfl/` and `fc/` hold each run (checkpoints, `metrics.csv`, `train.log`) and its test "
        "evaluation in `eval_test/` (`predictions.json`, `results.json`, `results.md`, `ced.png` per subset); "
        "`summary.json` holds the numbers of this report.",
        "",
    ]
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------
def add_demo_arguments(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``facemark demo [--out runs/demo] [--minutes M] [--seed S] [--device D] [--train N --test M]``"""
    defaults = DemoSettings()
    parser.add_argument("--out", default=defaults.out_dir,
                        help=f"output folder (default {defaults.out_dir}): data/, slpt/, sdfl/, fc/, report.md, ced.png, "
                             "predictions.png, summary.json. The demo's earlier runs in it are replaced")
    parser.add_argument("--minutes", type=float, default=defaults.minutes,
                        help=f"training budget PER MODEL in minutes (default {defaults.minutes:g}; SLPT, SDFL and the "
                             "FC baseline get the same wall-clock budget, turned into epochs by timing a few steps). "
                             "The whole demo takes about 3 x this plus a minute")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the data and of training (default 0)")
    parser.add_argument("--device", default=defaults.device,
                        help="auto (CUDA when available: more epochs in the same time), cpu, cuda or cuda:N")
    parser.add_argument("--train", type=int, default=defaults.num_train,
                        help=f"SynthFace training images (default {defaults.num_train}; 10 %% are held out for "
                             "best-epoch selection)")
    parser.add_argument("--test", type=int, default=defaults.num_test,
                        help=f"SynthFace test images (default {defaults.num_test})")
    parser.add_argument("--size", type=int, default=defaults.image_size,
                        help=f"image and crop side in pixels (default {defaults.image_size}; a multiple of 32)")
    parser.add_argument("--max-epochs", type=int, default=defaults.max_epochs,
                        help=f"upper bound on the epochs the budget may buy (default {defaults.max_epochs})")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loading processes (default: 1 on CPU, up to 8 on CUDA)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides applied to ALL THREE training recipes, as in facemark train "
                             "(e.g. optim.batch_size=8 augmentation.preset=none)")

    def run(args: argparse.Namespace) -> int:
        from facemark.errors import CommandError
        from facemark.engine.config import ConfigError
        from facemark.engine.train import TrainingDiverged

        settings = DemoSettings(out_dir=args.out, minutes=args.minutes, seed=args.seed, device=args.device,
                                num_train=args.train, num_test=args.test, image_size=args.size,
                                max_epochs=args.max_epochs, workers=args.workers, progress=not args.no_progress,
                                overrides=list(args.overrides))
        try:
            result = run_demo(settings)
        except (ConfigError, FileNotFoundError, FileExistsError, TrainingDiverged, ValueError) as error:
            raise CommandError(str(error)) from None
        print(result.table)
        print(f"SLPT stage NME_io: " + ", ".join(f"{100 * v:.2f} %" for v in result.stage_nmes))
        print(f"demo finished in {result.total_seconds / 60:.1f} min; report: {result.report}")
        return 0

    return run
