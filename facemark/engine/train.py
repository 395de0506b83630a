"""``train(config)``: the training loop shared by every method.

What one run does, in order:

1. Load the training split; hold out ``data.val_fraction`` of it (seeded) for best-model selection,
   unless ``data.val_split`` names a split or ``runtime.select_on="test"`` (the authors' practice:
   the test split picks the best epoch, logged as a WARNING because it makes test numbers optimistic).
2. Compute the method's statistics (SLPT mean face, SDFL neighbourhood) from the TRAINING part only
   and build the model, optimiser and learning-rate schedule.
3. Per epoch: train (DataLoader worker processes, augmentation seeded per sample, AMP on CUDA),
   validate (NME in the original images, exactly as ``facemark evaluate``), write ``last.pt``
   atomically, and ``best.pt`` when the validation NME improves. A NaN/inf loss stops the run
   with :class:`TrainingDiverged`; the last checkpoint on disk is the last good epoch.

``resume=True`` continues from ``<output_dir>/last.pt`` with the same weights, optimiser,
schedule, scaler, RNG states and data order, so a killed run ends exactly where an
uninterrupted one would (bit-exact on CPU; on GPU with ``runtime.deterministic=true``).

Outputs in ``runtime.output_dir``: ``config.yaml`` (resolved), ``last.pt``, ``best.pt``,
``metrics.csv`` (one row per epoch), ``train.log``, ``tensorboard/`` (when installed),
``pretrained_report.json`` (with ``model.pretrained``: what the ImageNet file gave the backbone,
:mod:`facemark.engine.pretrained`), and with ``runtime.report_best_and_last`` the test-split
results of the selected epoch and of the last epoch side by side (``results.json``,
``results.md``, ``eval_best_*/``, ``eval_last_*/``).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from facemark.engine.checkpoint import (
    capture_rng_state,
    read_resume_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from facemark.engine.config import ConfigError, TrainConfig, check_options, config_to_dict, save_config
from facemark.engine.data import (
    SPLITS_FILE,
    CropDataset,
    EpochSampler,
    WorkerLoader,
    carve_validation,
    config_splits,
    model_input,
    training_shapes,
    write_splits_file,
)
from facemark.engine.distributed import agree_on_minimum, broadcast_flag, cleanup_distributed, init_distributed
from facemark.engine.evaluate import predict_landmarks
from facemark.engine.methods import (
    METHODS,
    Method,
    build_model_from_spec,
    check_method_options,
    compute_method_statistics,
    get_method,
)
from facemark.engine.pretrained import check_pretrained_file, load_pretrained_backbone

__all__ = ["train", "TrainResult", "TrainingDiverged", "build_optimizer", "build_scheduler", "scheduler_steps_per_batch",
           "seed_everything"]

LOGGER_NAME = "facemark.train"
# The rows of the final report (runtime.report_best_and_last), by what picked the epoch.
REPORT_LABELS = {
    "test": "best epoch on the test set (authors' protocol)",
    "val": "best epoch on the validation split (held out)",
    "last": "last epoch (no test-set selection)",
}
CSV_COLUMNS = ["epoch", "global_step", "lr", "train_loss", "val_nme", "best_val_nme", "epoch_seconds", "images_per_second"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


@dataclass
class TrainResult:
    """What a finished run produced. ``model`` holds the final weights (not DDP-wrapped)."""

    output_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_metric: float | None
    best_epoch: int | None
    epochs_completed: int
    model: nn.Module
    # runtime.report_best_and_last: the text table and the run's results.json (else None).
    report_table: str | None = None
    report_path: Path | None = None


# -- building blocks -----------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    optim = config.optim
    parameters = [p for p in parameters if p.requires_grad]
    if optim.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                           nesterov=optim.nesterov)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """The learning-rate schedule. ``multistep`` (milestones in epochs) and ``constant`` (a
    multi-step schedule without milestones) are stepped once per epoch; ``cosine`` is stepped once
    per training step (:func:`scheduler_steps_per_batch`), from ``optim.lr`` down to 0 over the
    run's ``epochs x steps_per_epoch`` steps, so that a run of a few epochs decays smoothly."""
    optim = config.optim
    if optim.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=optim.epochs * steps_per_epoch)
    milestones = optim.milestones if optim.scheduler == "multistep" else []
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=optim.gamma)


def scheduler_steps_per_batch(config: TrainConfig) -> bool:
    """Whether :func:`build_scheduler`'s schedule is stepped after every batch (else every epoch)."""
    return config.optim.scheduler == "cosine"


def _fit_time_budget(config: TrainConfig, epochs_done: int, planned_epochs: int, elapsed_seconds: float,
                     epochs_timed: int, scheduler, context, logger) -> int:
    """``optim.time_budget_minutes``: the number of epochs to train in all, re-fitted after each
    epoch from the mean epoch time of this invocation: ``optim.epochs``, or fewer if they do not
    fit in the time left (a plan cut after a slow first epoch grows back, never past
    ``optim.epochs``). Multistep milestones not yet reached are placed at the same fraction of
    the new plan as of ``optim.epochs``, at least one epoch ahead and before the plan's end; when
    only one epoch is left, a drop the recipe places before its end happens now (the last epoch
    trains at the dropped rate instead of none). ``planned_epochs``: the plan before this call."""
    budget_seconds = 60.0 * config.optim.time_budget_minutes
    epoch_seconds = elapsed_seconds / max(epochs_timed, 1)
    fitting = epochs_done + int(max(0.0, budget_seconds - elapsed_seconds) // epoch_seconds)
    total = max(epochs_done, min(config.optim.epochs, fitting))
    total = agree_on_minimum(total, context)  # every rank stops together
    if total == planned_epochs:
        return total
    milestones = getattr(scheduler, "milestones", None)
    if milestones and total > epochs_done:
        # Pair the scheduler's milestones (those reached have fired and stay) with the recipe's.
        current = sorted(milestones.elements())
        moved, drops_now = [], 0
        for now, recipe in zip(current, config.optim.milestones):
            if now <= epochs_done or recipe >= config.optim.epochs:  # fired already, or never meant to
                moved.append(now)
            elif total == epochs_done + 1:  # no epoch left before the end: drop for the last one
                moved.append(epochs_done)
                drops_now += 1
            else:
                moved.append(min(max(round(recipe * total / config.optim.epochs), epochs_done + 1), total - 1))
        scheduler.milestones = type(milestones)(moved)
        for group in scheduler.optimizer.param_groups:  # what the scheduler's step would have done
            group["lr"] *= scheduler.gamma ** drops_now
    if context.is_main:
        logger.warning("optim.time_budget_minutes=%g: at %.0f s per epoch %d epoch(s) fit (plan: %d, recipe: %d); "
                       "training stops after epoch %d%s", config.optim.time_budget_minutes, epoch_seconds, total,
                       planned_epochs, config.optim.epochs, total,
                       f" (lr milestones now {sorted(scheduler.milestones.elements())})"
                       if milestones and total > epochs_done else "")
    return total


def _augmentation(config: TrainConfig):
    from facemark.data.transforms import AUGMENTATION_PRESETS, AugmentationConfig

    preset = AUGMENTATION_PRESETS[config.augmentation.preset]()
    overrides = config.augmentation.overrides
    if preset is None:
        if overrides:
            raise ConfigError("config key 'augmentation.overrides': preset 'none' takes no overrides "
                              "(pick preset slpt or sdfl to modify)")
        return None
    spec = preset.to_dict()
    check_options(overrides, list(spec), "augmentation.overrides")
    spec.update(overrides)
    try:
        return AugmentationConfig.from_dict(spec, source="config key 'augmentation.overrides'")
    except ValueError as error:
        raise ConfigError(str(error)) from None


class _TqdmHandler(logging.Handler):
    """Console log lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _open_logger(output_dir: Path, enabled: bool) -> tuple[logging.Logger, list[logging.Handler]]:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handlers: list[logging.Handler] = []
    if enabled:
        file_handler = logging.FileHandler(output_dir / "train.log")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        console = _TqdmHandler()
        console.setLevel(logging.INFO)
        console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handlers = [file_handler, console]
    else:
        handlers = [logging.NullHandler()]
    for handler in handlers:
        logger.addHandler(handler)
    return logger, handlers


def _close_logger(logger: logging.Logger, handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        logger.removeHandler(handler)
        handler.close()


def _open_tensorboard(output_dir: Path, enabled: bool, logger: logging.Logger):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("TensorBoard is not installed: logging to metrics.csv only (pip install tensorboard)")
        return None
    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))


def _read_csv_rows(path: Path, last_epoch: int) -> list[dict]:
    """The CSV rows of epochs <= ``last_epoch`` (rows of epochs after the checkpoint are dropped)."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [row for row in csv.DictReader(file) if int(row["epoch"]) <= last_epoch]


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _config_differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    differences = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differences += _config_differences(a, b, dotted + ".")
        elif a != b:
            differences.append(f"{dotted}: {a!r} -> {b!r}")
    return differences


# -- the steps of a run -------------------------------------------------------------------------
@dataclass
class _Recipe:
    """What the config asks for, checked before anything runs."""

    method: Method
    augmentation: object  # facemark.data.transforms.AugmentationConfig | None
    crop: object  # facemark.data.transforms.CropConvention
    output_dir: Path
    last_path: Path
    best_path: Path


@dataclass
class _Data:
    """The training faces and the faces that pick the best epoch (None: the last epoch is best)."""

    train_set: object  # facemark.data.records.LandmarkDataset
    selection: object | None
    layout: object  # facemark.layouts.Layout
    test_set: object | None = None  # the test faces, when they could be read


@dataclass
class _Progress:
    """Where the run stands; restored from ``last.pt`` by ``--resume``."""

    start_epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    csv_rows: list = field(default_factory=list)  # metrics.csv, one dict per epoch done


@dataclass
class _Run:
    """Everything the epoch loop uses."""

    config: TrainConfig
    recipe: _Recipe
    data: _Data
    context: object  # facemark.engine.distributed.DistributedContext
    logger: logging.Logger
    spec: dict
    model: nn.Module
    methods: Mapping[str, Method]
    train_model: nn.Module  # ``model``, or its DistributedDataParallel wrapper
    loss_function: object
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype = torch.float16
    scheduler: object = None
    train_data: CropDataset | None = None
    sampler: object = None
    loader: object = None
    writer: object = None
    resumed_from: Path | None = None


def _check_recipe(config: TrainConfig, methods: Mapping[str, Method], resume: bool,
                  resume_from: str | Path | None = None) -> _Recipe:
    """Config errors and a wrong --resume / output folder are reported before anything starts."""
    from facemark.data.transforms import CropConvention

    method = get_method(config.model.method, methods)
    check_method_options(method, config.model.options, config.loss.options)
    augmentation = _augmentation(config)
    crop = CropConvention(**config.data.crop.__dict__)
    output_dir = Path(config.runtime.output_dir)
    last_path, best_path = output_dir / "last.pt", output_dir / "best.pt"
    if resume_from is not None and not Path(resume_from).is_file():
        raise FileNotFoundError(f"--resume-from: no checkpoint {resume_from}")
    if resume and resume_from is None and not last_path.is_file():
        others = sorted(output_dir.glob("*.pt"))
        hint = f"; this folder holds {', '.join(p.name for p in others)}: continue with --resume-from FILE" if others else ""
        raise FileNotFoundError(f"--resume: no checkpoint {last_path} to resume from (runtime.output_dir={output_dir})"
                                + hint)
    if not resume and last_path.is_file():
        raise FileExistsError(f"{output_dir} already holds a run ({last_path}); pass --resume to continue it "
                              "or choose another runtime.output_dir")
    if config.model.pretrained and not resume:  # a resumed run takes its weights from last.pt
        check_pretrained_file(config.model.pretrained, config.model.backbone)
    return _Recipe(method, augmentation, crop, output_dir, last_path, best_path)


def _start_processes(config: TrainConfig, output_dir: Path):
    """Join the process group (if any) and create the output folder."""
    if config.runtime.deterministic:
        # Needed by cuBLAS for deterministic matmuls; must be set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    context = init_distributed(config.runtime.device)
    if context.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    if context.distributed:
        torch.distributed.barrier()
    return context


def _set_kernel_switches(config: TrainConfig, context) -> None:
    if context.device.type == "cuda":
        # TF32 matmuls and convolutions on Ampere and later: float32 range, 10-bit mantissa,
        # several times faster; landmark regression does not need more (the AMP paths use less).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif context.device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _load_data(config: TrainConfig, logger: logging.Logger) -> _Data:
    """The training split, and the selection faces: the test split (``runtime.select_on=test``),
    ``data.val_split``, or ``data.val_fraction`` carved from the training split. With
    ``data.test_fraction`` the test split is itself carved from ``data.train_split`` first."""
    from facemark.data import load_dataset
    from facemark.data.image_check import check_dataset_images

    data, runtime = config.data, config.runtime
    needs_test = runtime.select_on == "test" or runtime.report_best_and_last
    try:
        train_full, test_set = config_splits(data, test=True)
    except FileNotFoundError:
        if needs_test or data.test_fraction > 0:
            raise  # the run needs the test faces: fail now, not after training
        train_full, test_set = config_splits(data, test=False)
        logger.warning("test split %r of %s not found under %s: splits.json lists no test faces", data.test_split,
                       data.dataset, data.root)
    if runtime.select_on == "test":
        train_set = train_full
        selection = test_set
        logger.warning(
            "runtime.select_on=test: the best epoch is chosen on the TEST split %r, as the SLPT and SDFL "
            "authors did. Test numbers of best.pt are then optimistic, not a held-out estimate; use "
            "runtime.select_on=val for an unbiased result.", data.test_split)
    elif data.val_split is not None:
        train_set = train_full
        selection = load_dataset(data.dataset, data.root, data.val_split, layout=data.layout)
    elif data.val_fraction > 0:
        train_set, selection = carve_validation(train_full, data.val_fraction, runtime.seed)
    else:
        train_set, selection = train_full, None
        logger.warning("no validation data (data.val_fraction=0, no data.val_split): best.pt is the last epoch")
    check_dataset_images(train_set, selection)  # every unreadable image at once, before the first epoch
    if train_set.layout.normalisation == "bbox":  # the selection NME divides by each face's box
        for part in (selection, test_set):
            boxless = [record.identifier for record in (part or ()) if record.box is None]
            if boxless:
                raise ValueError(f"layout {train_set.layout.name!r} is normalised by the face box but {len(boxless)} "
                                 f"face(s) of {part.name}/{part.split} have no box, e.g. {boxless[:3]}; give every "
                                 "face a box or choose another normalisation in the layout")
    logger.info("data: %s %s, %d training faces, %s%s", data.dataset, data.root, len(train_set),
                f"{len(selection)} selection faces ({selection.split})" if selection is not None else "no validation",
                f", {len(test_set)} test faces ({test_set.split})" if test_set is not None else "")
    return _Data(train_set, selection, train_set.layout, test_set)


def _without_flips(recipe: _Recipe, layout, logger: logging.Logger) -> None:
    """A layout without a flip permutation cannot mirror its faces: flip augmentation is turned off."""
    import dataclasses

    augmentation = recipe.augmentation
    if layout.flip_permutation is None and augmentation is not None and augmentation.flip_probability > 0:
        logger.warning("layout %s has no flip_permutation: flip augmentation is off (flip_probability %g -> 0); "
                       "add the mirror pairs to the layout file to turn it on", layout.name,
                       augmentation.flip_probability)
        recipe.augmentation = dataclasses.replace(augmentation, flip_probability=0.0)


def _model_spec(config: TrainConfig, recipe: _Recipe, data: _Data, state: dict | None, logger: logging.Logger) -> dict:
    """What rebuilds the model: the checkpoint's (resume), or a new one whose statistics come from
    the training part only."""
    if state is not None:
        differences = _config_differences(state["config"], config_to_dict(config))
        if differences:
            logger.warning("resuming with a config that differs from the checkpoint's: %s", "; ".join(differences))
        return state["model_spec"]
    shapes = training_shapes(data.train_set, recipe.crop)
    statistics = compute_method_statistics(recipe.method, shapes, data.layout, config.model.options)
    return {
        "method": config.model.method,
        "backbone": config.model.backbone,
        "options": dict(config.model.options),
        "layout": data.layout.to_dict(),
        "statistics": {key: np.asarray(value) for key, value in statistics.items()},
        "crop": recipe.crop.to_dict(),
        "image_size": recipe.crop.size,
    }


def _build_model(config: TrainConfig, recipe: _Recipe, data: _Data, spec: dict, fresh: bool,
                 methods: Mapping[str, Method], context, logger: logging.Logger) -> tuple[nn.Module, nn.Module, object]:
    """The model (pretrained backbone on a fresh run), its loss, and the module that trains
    (DistributedDataParallel around the model when there are several processes)."""
    runtime = config.runtime
    model = build_model_from_spec(spec, methods)
    if config.model.pretrained and fresh:
        report = load_pretrained_backbone(model, config.model.pretrained)
        logger.info("%s", report.summary())
        if context.is_main:
            logger.info("pretrained load report: %s", report.write(recipe.output_dir / "pretrained_report.json"))
    model.to(context.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)  # the 4-d (convolution) weights
    loss_function = recipe.method.build_loss(data.layout, spec["statistics"], recipe.crop.size, **config.loss.options)
    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info("model: %s on %s, %.2f M parameters, device %s, %d process(es)", config.model.method,
                config.model.backbone, num_parameters / 1e6, context.device, context.world_size)

    train_model: nn.Module = model
    if context.distributed:
        if runtime.sync_bn:
            if context.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                logger.warning("runtime.sync_bn ignored: SyncBatchNorm needs CUDA devices")
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[context.device.index] if context.device.type == "cuda" else None)
    return model, train_model, loss_function


def _build_optimisation(config: TrainConfig, model: nn.Module, context, logger: logging.Logger):
    optimizer = build_optimizer(model.parameters(), config)
    amp = config.runtime.amp
    use_amp = bool(amp) and context.device.type == "cuda"
    if amp and not use_amp:
        logger.info("runtime.amp: mixed precision is used on CUDA only; training in float32 on %s", context.device)
    amp_dtype = torch.bfloat16 if amp == "bf16" else torch.float16  # true = fp16, as before bf16 was offered
    # bf16 has float32's exponent range: no loss scaling.
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype is torch.float16)
    return optimizer, scaler, use_amp, amp_dtype


def _restore(run: _Run, state: dict | None) -> _Progress:
    """Weights, optimiser, scaler, RNG states and the metrics rows of a resumed run (the schedule
    is restored by :func:`_build_schedule`, once the loader's length is known)."""
    if state is None:
        return _Progress()
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    progress = _Progress(int(state["epoch"]), int(state["global_step"]), state.get("best_metric"),
                         state.get("best_epoch"))
    rng_states = state["rng"]
    if len(rng_states) == run.context.world_size:
        restore_rng_state(rng_states[run.context.rank])
    else:
        run.logger.warning("checkpoint was written by %d process(es), this run has %d: RNG states are not "
                           "restored, so the continuation is not bit-identical", len(rng_states),
                           run.context.world_size)
    progress.csv_rows = _read_csv_rows(run.recipe.output_dir / "metrics.csv", progress.start_epoch)
    run.logger.info("resumed from %s: %d epoch(s) done, step %d", run.resumed_from, progress.start_epoch,
                    progress.global_step)
    return progress


def _build_loader(run: _Run) -> None:
    """The training loader: one seeded ``DistributedSampler`` shuffle per epoch for one and many
    processes; PDB balancing (``data.balancing=pdb``) repeats faces of rare poses."""
    from facemark.data.balancing import pdb_indices

    config, context, data = run.config, run.context, run.config.data
    records = run.data.train_set.records
    if data.balancing == "pdb":
        indices = pdb_indices(training_shapes(run.data.train_set, run.recipe.crop).crop, data.balancing_bins)
        records = [records[i] for i in indices]
        run.logger.info("pose-based data balancing: %d faces per epoch from %d", len(records), len(run.data.train_set))
    run.train_data = CropDataset(records, run.data.layout, run.recipe.crop, run.recipe.augmentation,
                                 seed=config.runtime.seed)
    if config.optim.batch_size % context.world_size:
        raise ConfigError(f"config key 'optim.batch_size' ({config.optim.batch_size}) is the global batch; it must be "
                          f"divisible by the number of processes ({context.world_size})")
    batch_size = config.optim.batch_size // context.world_size
    run.sampler = torch.utils.data.DistributedSampler(run.train_data, num_replicas=context.world_size,
                                                      rank=context.rank, shuffle=True, seed=config.runtime.seed,
                                                      drop_last=True)
    if len(run.sampler) < batch_size:
        raise ConfigError(f"the training split gives {len(run.sampler)} faces per process, fewer than one batch of "
                          f"{batch_size}: lower optim.batch_size")
    _warn_small_batch_norm_batch(config, context, run.model, run.logger)
    # data.persistent_workers: workers live for the whole run, no process start and dataset copy per
    # epoch. The epoch reaches them with each index (EpochSampler), so every epoch draws new
    # augmentations either way. 4 batches ready per worker (default 2): uint8 crops, 4 x 32 x
    # 192 KiB = 24 MiB per worker at 256 px, absorb a slow batch (a large image, a busy core).
    workers = ({"prefetch_factor": TRAIN_PREFETCH_FACTOR, "persistent_workers": data.persistent_workers}
               if data.workers > 0 else {})
    run.loader = WorkerLoader(
        run.train_data, batch_size=batch_size, sampler=EpochSampler(run.sampler), num_workers=data.workers,
        drop_last=True, pin_memory=context.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.runtime.seed),  # loaders never draw from the global RNG
        **workers,
    )


# Batches each training loader worker keeps ready (PyTorch's default: 2).
TRAIN_PREFETCH_FACTOR = 4
# Below this many images per process, BatchNorm statistics are noisy (DDP without SyncBN).
SMALL_BATCH_NORM_BATCH = 8


def _warn_small_batch_norm_batch(config: TrainConfig, context, model: nn.Module, logger: logging.Logger) -> None:
    """Warn when DDP gives each process so few images that its BatchNorm statistics are noisy."""
    per_process = config.optim.batch_size // context.world_size
    has_batch_norm = any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())
    if context.distributed and per_process < SMALL_BATCH_NORM_BATCH and not config.runtime.sync_bn and has_batch_norm:
        logger.warning("optim.batch_size %d over %d processes gives each %d images: BatchNorm statistics from so few "
                       "images are noisy; set runtime.sync_bn=true (statistics over the global batch, CUDA) or a larger "
                       "optim.batch_size", config.optim.batch_size, context.world_size, per_process)


def _build_schedule(run: _Run, state: dict | None) -> None:
    run.scheduler = build_scheduler(run.optimizer, run.config, len(run.loader))
    if state is not None:
        run.scheduler.load_state_dict(state["scheduler"])


def _train_epoch(run: _Run, progress: _Progress, epoch: int, epochs: int) -> dict:
    """One pass over the loader; returns the epoch's mean loss, last lr, images and seconds."""
    from tqdm.auto import tqdm

    config, context, runtime = run.config, run.context, run.config.runtime
    image_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    step_per_batch = scheduler_steps_per_batch(config)
    steps_per_epoch = len(run.loader)
    run.loader.sampler.set_epoch(epoch)  # EpochSampler: the epoch of the augmentations and of the shuffle
    run.train_model.train()
    epoch_start = time.perf_counter()
    # The loss stays on the device: reading it (a host-device synchronisation) happens at log
    # intervals and at the end of the epoch only. The first step whose loss is not finite is
    # recorded on the device too, so that divergence is reported where it happened.
    loss_sum = torch.zeros((), dtype=torch.float64, device=context.device)
    first_bad_step = torch.full((), -1, dtype=torch.int64, device=context.device)
    finite_steps = torch.zeros((), dtype=torch.int64, device=context.device)  # fp16 skips excluded from the mean
    loss_count, images_seen, shown_loss = 0, 0, "-"
    lr = run.optimizer.param_groups[0]["lr"]
    bar = tqdm(run.loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
               disable=not (runtime.progress and context.is_main), dynamic_ncols=True, leave=False)
    for step, batch in enumerate(bar):
        images = model_input(batch["image"], run.recipe.crop, context.device, image_format)
        targets = batch["target"].to(context.device, non_blocking=True)
        with torch.autocast(device_type=context.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
            output = run.train_model(images)
        # The loss outside autocast: coordinates and targets are compared in float32.
        loss = run.loss_function(output, targets)
        loss_detached = loss.detach().double()
        finite = torch.isfinite(loss_detached)
        first_bad_step = torch.where((first_bad_step < 0) & ~finite, torch.full_like(first_bad_step, step), first_bad_step)
        run.optimizer.zero_grad(set_to_none=True)
        # fp16: a step whose scaled gradients overflow is skipped by the scaler (which lowers its
        # scale); that is not divergence, so such steps are not counted as bad (see _check_finite).
        run.scaler.scale(loss).backward()
        if config.optim.grad_clip_norm is not None:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), config.optim.grad_clip_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        lr = run.optimizer.param_groups[0]["lr"]  # the rate this step used
        if step_per_batch:
            run.scheduler.step()
        progress.global_step += 1
        loss_sum += torch.where(finite, loss_detached, torch.zeros_like(loss_detached))
        finite_steps += finite
        loss_count += 1
        images_seen += images.shape[0] * context.world_size
        elapsed = time.perf_counter() - epoch_start
        rate = images_seen / max(elapsed, 1e-9)
        remaining_steps = (steps_per_epoch - step - 1) + (epochs - epoch - 1) * steps_per_epoch
        if progress.global_step % runtime.log_interval == 0:
            _check_finite(run, first_bad_step, epoch, steps_per_epoch, progress.global_step - step - 1)
            loss_value = float(loss_detached)
            shown_loss = f"{float(loss_sum) / max(int(finite_steps), 1):.4f}"
            run.logger.debug("epoch %d step %d/%d loss %.6f lr %.3e %.1f img/s", epoch + 1, step + 1,
                             steps_per_epoch, loss_value, lr, rate)
            if run.writer is not None:
                run.writer.add_scalar("train/loss", loss_value, progress.global_step)
                run.writer.add_scalar("train/lr", lr, progress.global_step)
        bar.set_postfix(loss=shown_loss, lr=f"{lr:.2e}", img_s=f"{rate:.1f}",
                        eta=_format_seconds(remaining_steps * elapsed / (step + 1)), refresh=False)
    bar.close()
    # Before validation and the checkpoint: a run whose loss went non-finite stops here, and
    # last.pt stays the previous epoch's.
    _check_finite(run, first_bad_step, epoch, steps_per_epoch, progress.global_step - loss_count)
    if not step_per_batch:
        run.scheduler.step()
    return {"train_loss": float(loss_sum) / max(int(finite_steps), 1), "lr": lr, "images": images_seen,
            "seconds": time.perf_counter() - epoch_start}


def _check_finite(run: _Run, first_bad_step: torch.Tensor, epoch: int, steps_per_epoch: int, epoch_start_step: int) -> None:
    """Stop (every rank) when any rank's loss was not finite at some step of this epoch so far.

    With fp16 mixed precision the scaler skips steps whose gradients overflow and halves its
    scale; an overflow of the loss itself is skipped the same way. The run stops only when the
    scale has fallen below 1, i.e. the loss stays non-finite however small the scale is."""
    bad_step = int(first_bad_step)  # one host-device synchronisation
    if run.scaler.is_enabled() and bad_step >= 0 and run.scaler.get_scale() >= 1.0:
        bad_step = -1
    if broadcast_flag(bad_step >= 0, run.context):
        _stop_diverged(run, "not finite (nan or inf)", epoch, max(bad_step, 0), steps_per_epoch, epoch_start_step + max(bad_step, 0))


def _stop_diverged(run: _Run, loss_value: float | str, epoch: int, step: int, steps_per_epoch: int, global_step: int):
    where = f"epoch {epoch + 1}, step {step + 1} of {steps_per_epoch} (global step {global_step + 1})"
    last_path = run.recipe.last_path
    kept = f"{last_path} (after epoch {epoch})" if last_path.is_file() else "none (no epoch finished)"
    message = (f"the training loss is {loss_value} at {where}; training stopped. "
               f"Last good checkpoint: {kept}. Try a lower optim.lr, optim.grad_clip_norm, or "
               "runtime.amp=false, then continue with --resume.")
    run.logger.error("%s", message)
    raise TrainingDiverged(message)


def _validate(run: _Run, epoch: int, epochs: int) -> float | None:
    """The selection NME (inter-ocular, original images; rank 0) when this epoch is validated."""
    from facemark.metrics import nme

    runtime, selection = run.config.runtime, run.data.selection
    validate = selection is not None and ((epoch + 1) % runtime.eval_interval == 0 or epoch + 1 == epochs)
    if not (run.context.is_main and validate):
        return None
    predictions = predict_landmarks(run.model, selection.records, run.data.layout, run.recipe.crop, run.context.device,
                                    batch_size=runtime.eval_batch_size, workers=run.config.data.workers,
                                    progress=runtime.progress, description="validate")
    norm = run.data.layout.normalisation  # inter-ocular for the benchmarks; an own layout's choice
    boxes = np.array([record.box for record in selection.records], dtype=np.float64) if norm == "bbox" else None
    return float(nme(predictions, selection.landmarks(), run.data.layout, norm, boxes=boxes).mean())


def _end_epoch(run: _Run, progress: _Progress, epoch: int, epochs: int, trained: dict, val_nme: float | None,
               average_seconds) -> None:
    """Update the best epoch, then (rank 0) write metrics.csv, TensorBoard, last.pt / best.pt and
    the epoch's log line. ``average_seconds()``: the mean epoch time so far (for the ETA)."""
    context, config = run.context, run.config
    improved = False
    if run.data.selection is None:
        improved = True  # no selection data: "best" is the latest epoch
    elif val_nme is not None and (progress.best_metric is None or val_nme < progress.best_metric):
        improved = True
    if improved and val_nme is not None:
        progress.best_metric, progress.best_epoch = val_nme, epoch + 1
    elif improved:
        progress.best_epoch = epoch + 1
    # Every rank's RNG state, so a resumed multi-process run continues exactly too.
    rng_states = [capture_rng_state()]
    if context.distributed:
        gathered: list = [None] * context.world_size
        torch.distributed.all_gather_object(gathered, rng_states[0])
        rng_states = gathered
    if not context.is_main:
        return
    rate = trained["images"] / max(trained["seconds"], 1e-9)
    progress.csv_rows.append({
        "epoch": epoch + 1, "global_step": progress.global_step, "lr": trained["lr"],
        "train_loss": trained["train_loss"], "val_nme": "" if val_nme is None else val_nme,
        "best_val_nme": "" if progress.best_metric is None else progress.best_metric,
        "epoch_seconds": round(trained["seconds"], 3), "images_per_second": round(rate, 2),
    })
    _write_csv(run.recipe.output_dir / "metrics.csv", progress.csv_rows)
    if run.writer is not None:
        run.writer.add_scalar("epoch/train_loss", trained["train_loss"], epoch + 1)
        if val_nme is not None:
            run.writer.add_scalar("epoch/val_nme", val_nme, epoch + 1)
        run.writer.flush()
    checkpoint = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        "rng": rng_states,
        "epoch": epoch + 1,
        "global_step": progress.global_step,
        "best_metric": progress.best_metric,
        "best_epoch": progress.best_epoch,
        "config": config_to_dict(config),
        "model_spec": run.spec,
    }
    save_checkpoint(checkpoint, run.recipe.last_path)
    if improved:
        _same_checkpoint_as(run.recipe.best_path, run.recipe.last_path, checkpoint)
    run.logger.info(
        "epoch %d/%d: loss %.5f, lr %.2e, %s%.1f img/s, %s/epoch, ETA %s%s", epoch + 1, epochs, trained["train_loss"],
        trained["lr"], "" if val_nme is None else f"{config.runtime.select_on} NME {100 * val_nme:.3f}%, ", rate,
        _format_seconds(trained["seconds"]), _format_seconds(average_seconds() * (epochs - epoch - 1)),
        " (best)" if improved and val_nme is not None else "")


def _same_checkpoint_as(path: Path, written: Path, checkpoint: dict) -> None:
    """Make ``path`` hold the checkpoint just written to ``written``: a hard link (no second write
    of a file of hundreds of MB; ``written`` is only ever replaced by rename, so the link keeps
    this epoch), renamed into place atomically; a second write where links are not supported."""
    temporary = path.with_name(f".{path.name}.link")
    try:
        temporary.unlink(missing_ok=True)
        os.link(written, temporary)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        save_checkpoint(checkpoint, path)


def _run_epochs(run: _Run, progress: _Progress) -> int:
    """Train from ``progress.start_epoch`` to the plan's end (``optim.epochs``, or fewer under
    ``optim.time_budget_minutes``); returns the number of epochs of the plan."""
    config = run.config
    epochs = config.optim.epochs
    run_start, epochs_timed = time.perf_counter(), 0
    for epoch in range(progress.start_epoch, config.optim.epochs):
        if epoch >= epochs:  # the time budget cut the plan short (below); it never exceeds optim.epochs
            break
        trained = _train_epoch(run, progress, epoch, epochs)
        val_nme = _validate(run, epoch, epochs)
        if run.context.is_main:
            epochs_timed += 1
        _end_epoch(run, progress, epoch, epochs, trained, val_nme,
                   lambda: (time.perf_counter() - run_start) / epochs_timed)
        if config.optim.time_budget_minutes is not None and epoch + 1 < config.optim.epochs:
            epochs = _fit_time_budget(config, epoch + 1, epochs, time.perf_counter() - run_start,
                                      epoch + 1 - progress.start_epoch, run.scheduler, run.context, run.logger)
        if run.context.distributed:
            torch.distributed.barrier()
    return epochs


def _report_best_and_last(run: _Run, progress: _Progress, last_epoch: int) -> tuple[str, Path]:
    """``runtime.report_best_and_last``: best.pt and last.pt evaluated on the test split exactly as
    ``facemark evaluate`` does (each in ``eval_{best,last}_<dataset>_<split>/``), side by side in
    one table (returned for the command line to print, ``results.md``; one summary line in the log) and
    in the run's ``results.json``, each row labelled with the
    protocol that picked it and its epoch."""
    from facemark.engine.evaluate import evaluate
    from facemark.metrics import compare_markdown, compare_table

    config, recipe = run.config, run.recipe
    data, runtime = config.data, config.runtime
    rows = []
    if run.data.selection is not None and recipe.best_path.is_file():
        rows.append(("best", REPORT_LABELS[runtime.select_on], progress.best_epoch, recipe.best_path))
    rows.append(("last", REPORT_LABELS["last"], last_epoch, recipe.last_path))
    test_split = data.test_split if data.test_fraction == 0 else "test"  # carved from train_split: its [test] part
    results, entries = {}, []
    evaluated: dict[int, tuple] = {}  # epoch -> (results, folder): best and last may be the same epoch
    for key, label, epoch, path in rows:
        if epoch not in evaluated:
            folder = recipe.output_dir / f"eval_{key}_{data.dataset}_{Path(test_split).stem.replace('/', '_')}"
            # dataset and split from the checkpoint's config: the same test faces as splits.json lists
            evaluated[epoch] = (evaluate(path, data.root,
                                         output_dir=folder, device=str(run.context.device),
                                         batch_size=runtime.eval_batch_size, workers=data.workers,
                                         progress=runtime.progress, methods=run.methods), folder)
        epoch_results, folder = evaluated[epoch]
        results[f"{label}, epoch {epoch}"] = epoch_results
        entries.append({"protocol": key, "label": label, "epoch": epoch, "checkpoint": path.name,
                        "evaluation": folder.name, "summary": epoch_results.summary()})
    table = compare_table(results)
    (recipe.output_dir / "results.md").write_text(compare_markdown(results) + "\n")
    path = recipe.output_dir / "results.json"
    path.write_text(json.dumps({"format": "facemark.training_results", "version": 1, "dataset": data.dataset,
                                "split": test_split, "select_on": runtime.select_on, "rows": entries},
                               indent=1) + "\n")
    # One line in the log (the command line prints the whole table; results.md holds it too).
    run.logger.info("test-split results (%s): %s", path, "; ".join(
        f"{entry['label']}, epoch {entry['epoch']}: NME_io {100 * entry['summary']['all']['NME_io']:.2f} %"
        for entry in entries if "NME_io" in entry["summary"]["all"]))
    return table, path


# -- the run -------------------------------------------------------------------------------------
def train(config: TrainConfig, resume: bool = False, methods: Mapping[str, Method] | None = None,
          resume_from: str | Path | None = None) -> TrainResult:
    """Train ``config``; ``resume=True`` continues from ``<runtime.output_dir>/last.pt``,
    ``resume_from=FILE`` from another checkpoint of the run (e.g. ``best.pt`` when ``last.pt`` is
    damaged); the run goes on writing into ``runtime.output_dir``.

    ``methods`` maps ``model.method`` names to adapters (default :data:`METHODS`). Works as a
    single process or under ``torchrun`` (see :mod:`facemark.engine.distributed`).
    """
    methods = METHODS if methods is None else methods
    resume = resume or resume_from is not None
    recipe = _check_recipe(config, methods, resume, resume_from)
    context = _start_processes(config, recipe.output_dir)
    logger, handlers = _open_logger(recipe.output_dir, context.is_main)
    if context.is_main:
        # Checkpoint writes killed before their rename leave temporary files (as large as a checkpoint).
        for temporary in remove_stale_temporaries(recipe.output_dir):
            logger.warning("removed %s, left by a checkpoint write that was interrupted", temporary)
    run: _Run | None = None
    # Process-wide switches changed below, restored when the run ends.
    previous_switches = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    try:
        _set_kernel_switches(config, context)
        seed_everything(config.runtime.seed)
        data = _load_data(config, logger)
        _without_flips(recipe, data.layout, logger)
        state = None
        if resume:
            state, resumed_from = read_resume_checkpoint(recipe.output_dir, resume_from)
        spec = _model_spec(config, recipe, data, state, logger)
        model, train_model, loss_function = _build_model(config, recipe, data, spec, state is None, methods, context,
                                                         logger)
        # Different dropout masks on each rank (the weights are kept equal by DDP).
        torch.manual_seed(config.runtime.seed + context.rank)
        optimizer, scaler, use_amp, amp_dtype = _build_optimisation(config, model, context, logger)
        run = _Run(config, recipe, data, context, logger, spec, model, methods, train_model, loss_function, optimizer,
                   scaler, use_amp, amp_dtype)
        if state is not None:
            run.resumed_from = resumed_from
        progress = _restore(run, state)
        if context.is_main:
            save_config(config, recipe.output_dir / "config.yaml")
            write_splits_file(recipe.output_dir / SPLITS_FILE, {"train": data.train_set, "val": data.selection
                              if config.runtime.select_on == "val" else None, "test": data.test_set}, config.data)
            _write_csv(recipe.output_dir / "metrics.csv", progress.csv_rows)
        run.writer = _open_tensorboard(recipe.output_dir, config.runtime.tensorboard and context.is_main, logger)
        _build_loader(run)
        _build_schedule(run, state)
        del state

        epochs = _run_epochs(run, progress)

        best_path, best_metric = recipe.best_path, progress.best_metric
        result = TrainResult(recipe.output_dir, recipe.last_path, best_path if best_path.is_file() else None,
                             best_metric, progress.best_epoch, epochs, model)
        if context.is_main:
            logger.info("done: %s%s", recipe.last_path, f"; best {best_path} (epoch {progress.best_epoch}, "
                        f"{config.runtime.select_on} NME {100 * best_metric:.3f}%)" if best_metric is not None else "")
            if config.runtime.report_best_and_last:
                result.report_table, result.report_path = _report_best_and_last(run, progress, epochs)
        return result
    finally:
        torch.use_deterministic_algorithms(previous_switches[0])
        torch.backends.cudnn.benchmark = previous_switches[1]
        if run is not None and run.writer is not None:
            run.writer.close()
        if run is not None:
            run.loader = None  # its persistent worker processes end with it
        _close_logger(logger, handlers)
        cleanup_distributed(context)
