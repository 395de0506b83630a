"""Does a recipe learn past the mean shape, and how fast? A fixed number of training steps of a
config's model on a few of its training faces, scored every ``--eval-every`` steps on test crops.

    python benchmarks/baseline_learning.py configs/synthface_detr_cpu.yaml data.root=data/synthface \
        --faces 1000 --steps 400 --eval-every 100

The model, loss and augmentation are the config's (through the method adapter, as ``facemark
train`` builds them); Adam at ``optim.lr``, batches of ``optim.batch_size``, no schedule, no
validation split. Every evaluation prints, on the first ``--test-faces`` test crops (crop space,
eval mode): NME_io and FR_io@0.10 of the model and of the mean shape of the training crops, and
how much the predictions vary across faces against the ground truth (a model that predicts one
shape for every face has 0). For the DETR-style model also its decoder's residual stream (the
content T after the last layer): its norm per landmark and its standard deviation across faces
per channel (what reaches the head through the final LayerNorm), and the mean largest
cross-attention weight (uniform over 256 tokens: 0.004). Used for docs/slpt.md and
docs/baselines.md ("On SynthFace, on a CPU"); a step count fixed in advance, not a time budget,
so the numbers do not depend on the machine's load.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from facemark.data.transforms import AUGMENTATION_PRESETS, CropConvention, normalise_crops
from facemark.engine.config import load_config
from facemark.engine.data import CropDataset, config_splits, training_shapes
from facemark.engine.methods import METHODS, compute_method_statistics


def inter_ocular_errors(predictions: torch.Tensor, targets: torch.Tensor, inter_ocular) -> torch.Tensor:
    distance = (targets[:, inter_ocular[0]] - targets[:, inter_ocular[1]]).norm(dim=-1)
    return (predictions - targets).norm(dim=-1).mean(dim=-1) / distance


def detr_decoder_summary(model, images: torch.Tensor) -> str:
    memory = model.memory(images)
    content = memory.new_zeros(images.shape[0], model.num_points, memory.shape[-1])
    if model.initial_content == "queries":
        content = content + model.landmark_queries
    bias = model.attention_bias(*model.token_grid(images))
    for layer in model.layers:
        content = layer(content, model.landmark_queries, memory, memory, bias)
    largest = model.cross_attention_weights(images).amax(dim=-1).mean()
    return (f"; decoder T: norm {content.norm(dim=-1).mean():.1f}, std across faces {content.std(dim=0).mean():.3f}; "
            f"largest attention weight {largest:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--faces", type=int, default=1000, help="training faces (the first of the split)")
    parser.add_argument("--test-faces", type=int, default=200)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = load_config(args.config, args.overrides)
    crop = CropConvention(**config.data.crop.__dict__)
    train_full, test_set = config_splits(config.data)
    train_set = dataclasses.replace(train_full, records=train_full.records[: args.faces])
    layout = train_set.layout
    shapes = training_shapes(train_set, crop)
    method = METHODS[config.model.method]
    statistics = compute_method_statistics(method, shapes, layout, config.model.options)
    model = method.build_model(config.model.backbone, layout, statistics, crop.size, **config.model.options)
    loss_function = method.build_loss(layout, statistics, crop.size, **config.loss.options)
    if config.augmentation.overrides:
        parser.error("augmentation.overrides are not supported here; pick a preset (augmentation.preset=...)")
    augmentation = AUGMENTATION_PRESETS[config.augmentation.preset]()
    train_data = CropDataset(train_set.records, layout, crop, augmentation=augmentation, seed=args.seed)
    test_data = CropDataset(test_set.records[: args.test_faces], layout, crop)
    test_images = normalise_crops(torch.stack([test_data[i]["image"] for i in range(len(test_data))]), crop.normalisation)
    test_targets = torch.stack([test_data[i]["target"] for i in range(len(test_data))])

    mean_shape = torch.as_tensor(shapes.crop.mean(axis=0), dtype=torch.float32).expand_as(test_targets)
    errors = inter_ocular_errors(mean_shape, test_targets, layout.inter_ocular)
    print(f"mean shape of {len(train_set)} training crops: NME_io {100 * errors.mean():.2f} %, "
          f"FR_io@0.10 {100 * (errors > 0.1).float().mean():.2f} % ({len(test_data)} test crops)", flush=True)

    def evaluate(step: int) -> None:
        model.eval()
        with torch.no_grad():
            predictions = torch.cat([model(test_images[i: i + 50]).landmarks.float()
                                     for i in range(0, len(test_images), 50)])
            errors = inter_ocular_errors(predictions, test_targets, layout.inter_ocular)
            line = (f"step {step}: NME_io {100 * errors.mean():.2f} %, FR_io@0.10 {100 * (errors > 0.1).float().mean():.2f} %, "
                    f"spread across faces {predictions.std(dim=0).mean():.4f} (ground truth "
                    f"{test_targets.std(dim=0).mean():.4f})")
            if config.model.method == "detr":
                line += detr_decoder_summary(model, test_images[:32])
        print(line, flush=True)
        model.train()

    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    rng = np.random.default_rng(args.seed)
    batch_size, step, epoch, losses, start = config.optim.batch_size, 0, 0, [], time.perf_counter()
    model.train()
    while step < args.steps:
        train_data.set_epoch(epoch)
        order = rng.permutation(len(train_data))
        for first in range(0, len(order) - batch_size + 1, batch_size):
            batch = [train_data[int(i)] for i in order[first: first + batch_size]]
            images = normalise_crops(torch.stack([b["image"] for b in batch]), crop.normalisation)
            loss = loss_function(model(images), torch.stack([b["target"] for b in batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if step % args.eval_every == 0 or step == args.steps:
                print(f"step {step}: training loss {np.mean(losses[-args.eval_every:]):.5f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
                evaluate(step)
            if step >= args.steps:
                break
        epoch += 1


if __name__ == "__main__":
    main()
