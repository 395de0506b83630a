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
``metrics.csv`` (one row per epoch), ``train.log``, ``tensorboard/`` (when installed).
"""
from __future__ import annotations

import csv
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from facemark.engine.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from facemark.engine.config import ConfigError, TrainConfig, check_options, config_to_dict, save_config
from facemark.engine.data import CropDataset, carve_validation, training_shapes, worker_init
from facemark.engine.distributed import agree_on_minimum, broadcast_flag, cleanup_distributed, init_distributed
from facemark.engine.evaluate import predict_landmarks
from facemark.engine.methods import (
    METHODS,
    Method,
    build_model_from_spec,
    check_method_options,
    compute_method_statistics,
    get_method,
    load_pretrained_backbone,
)

__all__ = ["train", "TrainResult", "TrainingDiverged", "build_optimizer", "build_scheduler", "scheduler_steps_per_batch",
           "seed_everything"]

LOGGER_NAME = "facemark.train"
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


# -- the run -------------------------------------------------------------------------------------
def train(config: TrainConfig, resume: bool = False, methods: Mapping[str, Method] | None = None) -> TrainResult:
    """Train ``config``; ``resume=True`` continues from ``<runtime.output_dir>/last.pt``.

    ``methods`` maps ``model.method`` names to adapters (default :data:`METHODS`). Works as a
    single process or under ``torchrun`` (see :mod:`facemark.engine.distributed`).
    """
    from facemark.data import load_dataset
    from facemark.data.balancing import pdb_indices
    from facemark.data.image_check import check_dataset_images
    from facemark.data.transforms import CropConvention
    from facemark.metrics import nme

    methods = METHODS if methods is None else methods
    method = get_method(config.model.method, methods)
    check_method_options(method, config.model.options, config.loss.options)
    augmentation = _augmentation(config)
    crop = CropConvention(**config.data.crop.__dict__)
    runtime = config.runtime

    output_dir = Path(runtime.output_dir)
    last_path, best_path = output_dir / "last.pt", output_dir / "best.pt"
    if resume and not last_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint {last_path} to resume from (runtime.output_dir={output_dir})")
    if not resume and last_path.is_file():
        raise FileExistsError(f"{output_dir} already holds a run ({last_path}); pass --resume to continue it "
                              "or choose another runtime.output_dir")

    if runtime.deterministic:
        # Needed by cuBLAS for deterministic matmuls; must be set before the first CUDA call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    context = init_distributed(runtime.device)
    if context.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    if context.distributed:
        torch.distributed.barrier()
    logger, handlers = _open_logger(output_dir, context.is_main)
    writer = None
    # Process-wide switches changed below, restored when the run ends.
    previous_switches = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    try:
        if runtime.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif context.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        seed_everything(runtime.seed)

        # -- data ---------------------------------------------------------------------------
        data = config.data
        train_full = load_dataset(data.dataset, data.root, data.train_split)
        if runtime.select_on == "test":
            train_set = train_full
            selection = load_dataset(data.dataset, data.root, data.test_split)
            logger.warning(
                "runtime.select_on=test: the best epoch is chosen on the TEST split %r, as the SLPT and SDFL "
                "authors did. Test numbers of best.pt are then optimistic, not a held-out estimate; use "
                "runtime.select_on=val for an unbiased result.", data.test_split)
        elif data.val_split is not None:
            train_set = train_full
            selection = load_dataset(data.dataset, data.root, data.val_split)
        elif data.val_fraction > 0:
            train_set, selection = carve_validation(train_full, data.val_fraction, runtime.seed)
        else:
            train_set, selection = train_full, None
            logger.warning("no validation data (data.val_fraction=0, no data.val_split): best.pt is the last epoch")
        check_dataset_images(train_set, selection)  # every unreadable image at once, before the first epoch
        layout = train_set.layout
        logger.info("data: %s %s, %d training faces, %s", data.dataset, data.root, len(train_set),
                    f"{len(selection)} selection faces ({selection.split})" if selection is not None else "no validation")

        # -- model (statistics from the training part only) -----------------------------------
        state = load_checkpoint(last_path) if resume else None
        if state is not None:
            spec = state["model_spec"]
            differences = _config_differences(state["config"], config_to_dict(config))
            if differences:
                logger.warning("resuming with a config that differs from the checkpoint's: %s", "; ".join(differences))
        else:
            shapes = training_shapes(train_set, crop)
            statistics = compute_method_statistics(method, shapes, layout, config.model.options)
            spec = {
                "method": config.model.method,
                "backbone": config.model.backbone,
                "options": dict(config.model.options),
                "layout": layout.to_dict(),
                "statistics": {key: np.asarray(value) for key, value in statistics.items()},
                "crop": crop.to_dict(),
                "image_size": crop.size,
            }
        model = build_model_from_spec(spec, methods)
        if config.model.pretrained and state is None:
            logger.info("%s", load_pretrained_backbone(model, config.model.pretrained))
        model.to(context.device)
        image_format = torch.channels_last if runtime.channels_last else torch.preserve_format
        if runtime.channels_last:
            model.to(memory_format=torch.channels_last)  # the 4-d (convolution) weights
        loss_function = method.build_loss(layout, spec["statistics"], crop.size, **config.loss.options)
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
        # Different dropout masks on each rank (the weights are kept equal by DDP).
        torch.manual_seed(runtime.seed + context.rank)

        optimizer = build_optimizer(model.parameters(), config)
        use_amp = runtime.amp and context.device.type == "cuda"
        if runtime.amp and not use_amp:
            logger.info("runtime.amp: mixed precision is used on CUDA only; training in float32 on %s", context.device)
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

        start_epoch, global_step = 0, 0
        best_metric: float | None = None
        best_epoch: int | None = None
        csv_rows: list[dict] = []
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
            best_metric, best_epoch = state.get("best_metric"), state.get("best_epoch")
            rng_states = state["rng"]
            if len(rng_states) == context.world_size:
                restore_rng_state(rng_states[context.rank])
            else:
                logger.warning("checkpoint was written by %d process(es), this run has %d: RNG states are not "
                               "restored, so the continuation is not bit-identical", len(rng_states), context.world_size)
            csv_rows = _read_csv_rows(output_dir / "metrics.csv", start_epoch)
            logger.info("resumed from %s: %d epoch(s) done, step %d", last_path, start_epoch, global_step)
        if context.is_main:
            save_config(config, output_dir / "config.yaml")
            _write_csv(output_dir / "metrics.csv", csv_rows)
        writer = _open_tensorboard(output_dir, runtime.tensorboard and context.is_main, logger)

        # -- loaders ----------------------------------------------------------------------------
        records = train_set.records
        if data.balancing == "pdb":
            indices = pdb_indices(training_shapes(train_set, crop).crop, data.balancing_bins)
            records = [records[i] for i in indices]
            logger.info("pose-based data balancing: %d faces per epoch from %d", len(records), len(train_set))
        train_data = CropDataset(records, layout, crop, augmentation, seed=runtime.seed)
        if config.optim.batch_size % context.world_size:
            raise ConfigError(f"config key 'optim.batch_size' ({config.optim.batch_size}) is the global batch; it must be "
                              f"divisible by the number of processes ({context.world_size})")
        batch_size = config.optim.batch_size // context.world_size
        # One sampler for one and many processes: a seeded shuffle per epoch (set_epoch).
        sampler = torch.utils.data.DistributedSampler(train_data, num_replicas=context.world_size, rank=context.rank,
                                                      shuffle=True, seed=runtime.seed, drop_last=True)
        if len(sampler) < batch_size:
            raise ConfigError(f"the training split gives {len(sampler)} faces per process, fewer than one batch of "
                              f"{batch_size}: lower optim.batch_size")
        loader = torch.utils.data.DataLoader(
            train_data, batch_size=batch_size, sampler=sampler, num_workers=data.workers, drop_last=True,
            worker_init_fn=worker_init, pin_memory=context.device.type == "cuda",
            generator=torch.Generator().manual_seed(runtime.seed),  # loaders never draw from the global RNG
        )
        steps_per_epoch = len(loader)
        scheduler = build_scheduler(optimizer, config, steps_per_epoch)
        step_scheduler_per_batch = scheduler_steps_per_batch(config)
        if state is not None:
            scheduler.load_state_dict(state["scheduler"])
            del state

        # -- epochs -----------------------------------------------------------------------------
        from tqdm.auto import tqdm

        epochs = config.optim.epochs
        run_start, epochs_timed = time.perf_counter(), 0
        for epoch in range(start_epoch, config.optim.epochs):
            if epoch >= epochs:  # the time budget cut the plan short (below); it never exceeds optim.epochs
                break
            sampler.set_epoch(epoch)
            train_data.set_epoch(epoch)
            train_model.train()
            epoch_start = time.perf_counter()
            loss_sum, loss_count, images_seen = 0.0, 0, 0
            lr = optimizer.param_groups[0]["lr"]
            bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                       disable=not (runtime.progress and context.is_main), dynamic_ncols=True, leave=False)
            for step, batch in enumerate(bar):
                images = batch["image"].to(context.device, non_blocking=True, memory_format=image_format)
                targets = batch["target"].to(context.device, non_blocking=True)
                with torch.autocast(device_type=context.device.type, dtype=torch.float16, enabled=use_amp):
                    output = train_model(images)
                    loss = loss_function(output, targets)
                loss_value = float(loss.detach())
                if broadcast_flag(not math.isfinite(loss_value), context):
                    where = f"epoch {epoch + 1}, step {step + 1} of {steps_per_epoch} (global step {global_step + 1})"
                    kept = f"{last_path} (after epoch {epoch})" if last_path.is_file() else "none (no epoch finished)"
                    message = (f"the training loss is {loss_value} at {where}; training stopped. "
                               f"Last good checkpoint: {kept}. Try a lower optim.lr, optim.grad_clip_norm, or "
                               "runtime.amp=false, then continue with --resume.")
                    logger.error("%s", message)
                    raise TrainingDiverged(message)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.optim.grad_clip_norm is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]["lr"]  # the rate this step used
                if step_scheduler_per_batch:
                    scheduler.step()
                global_step += 1
                loss_sum += loss_value
                loss_count += 1
                images_seen += images.shape[0] * context.world_size
                elapsed = time.perf_counter() - epoch_start
                rate = images_seen / max(elapsed, 1e-9)
                remaining_steps = (steps_per_epoch - step - 1) + (epochs - epoch - 1) * steps_per_epoch
                bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}",
                                eta=_format_seconds(remaining_steps * elapsed / (step + 1)), refresh=False)
                if global_step % runtime.log_interval == 0:
                    logger.debug("epoch %d step %d/%d loss %.6f lr %.3e %.1f img/s", epoch + 1, step + 1,
                                 steps_per_epoch, loss_value, lr, rate)
                    if writer is not None:
                        writer.add_scalar("train/loss", loss_value, global_step)
                        writer.add_scalar("train/lr", lr, global_step)
            bar.close()
            if not step_scheduler_per_batch:
                scheduler.step()
            epoch_seconds = time.perf_counter() - epoch_start
            train_loss = loss_sum / max(loss_count, 1)

            # -- validation and checkpoints (rank 0) --------------------------------------------
            validate = selection is not None and ((epoch + 1) % runtime.eval_interval == 0 or epoch + 1 == epochs)
            val_nme = None
            if context.is_main and validate:
                predictions = predict_landmarks(model, selection.records, layout, crop, context.device,
                                                batch_size=runtime.eval_batch_size, workers=data.workers,
                                                progress=runtime.progress, description="validate")
                val_nme = float(nme(predictions, selection.landmarks(), layout, "inter_ocular").mean())
            improved = False
            if selection is None:
                improved = True  # no selection data: "best" is the latest epoch
            elif val_nme is not None and (best_metric is None or val_nme < best_metric):
                improved = True
            if improved and val_nme is not None:
                best_metric, best_epoch = val_nme, epoch + 1
            elif improved:
                best_epoch = epoch + 1
            # Every rank's RNG state, so a resumed multi-process run continues exactly too.
            rng_states = [capture_rng_state()]
            if context.distributed:
                gathered: list = [None] * context.world_size
                torch.distributed.all_gather_object(gathered, rng_states[0])
                rng_states = gathered
            if context.is_main:
                epochs_timed += 1
                rate = images_seen / max(epoch_seconds, 1e-9)
                csv_rows.append({
                    "epoch": epoch + 1, "global_step": global_step, "lr": lr, "train_loss": train_loss,
                    "val_nme": "" if val_nme is None else val_nme,
                    "best_val_nme": "" if best_metric is None else best_metric,
                    "epoch_seconds": round(epoch_seconds, 3), "images_per_second": round(rate, 2),
                })
                _write_csv(output_dir / "metrics.csv", csv_rows)
                if writer is not None:
                    writer.add_scalar("epoch/train_loss", train_loss, epoch + 1)
                    if val_nme is not None:
                        writer.add_scalar("epoch/val_nme", val_nme, epoch + 1)
                    writer.flush()
                checkpoint = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if use_amp else None,
                    "rng": rng_states,
                    "epoch": epoch + 1,
                    "global_step": global_step,
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "config": config_to_dict(config),
                    "model_spec": spec,
                }
                save_checkpoint(checkpoint, last_path)
                if improved:
                    save_checkpoint(checkpoint, best_path)
                average = (time.perf_counter() - run_start) / epochs_timed
                logger.info(
                    "epoch %d/%d: loss %.5f, lr %.2e, %s%.1f img/s, %s/epoch, ETA %s%s", epoch + 1, epochs, train_loss,
                    lr, "" if val_nme is None else f"val NME {100 * val_nme:.3f}%, ", rate, _format_seconds(epoch_seconds),
                    _format_seconds(average * (epochs - epoch - 1)), " (best)" if improved and val_nme is not None else "")
            if config.optim.time_budget_minutes is not None and epoch + 1 < config.optim.epochs:
                epochs = _fit_time_budget(config, epoch + 1, epochs, time.perf_counter() - run_start,
                                          epoch + 1 - start_epoch, scheduler, context, logger)
            if context.distributed:
                torch.distributed.barrier()

        if context.is_main:
            logger.info("done: %s%s", last_path, f"; best {best_path} (epoch {best_epoch}, val NME "
                        f"{100 * best_metric:.3f}%)" if best_metric is not None else "")
        return TrainResult(output_dir, last_path, best_path if best_path.is_file() else None, best_metric, best_epoch,
                           epochs, model)
    finally:
        torch.use_deterministic_algorithms(previous_switches[0])
        torch.backends.cudnn.benchmark = previous_switches[1]
        if writer is not None:
            writer.close()
        _close_logger(logger, handlers)
        cleanup_distributed(context)

