"""What a trained SLPT has learned: per stage, its error next to the best similarity transform of
the mean face, and where its cross-attention looks.

    .venv/bin/python benchmarks/slpt_diagnosis.py runs/demo/slpt/best.pt --data runs/demo/data

For ``--faces`` test faces (crops from the checkpoint's convention, no augmentation) it prints:

* NME_io in crop space of each stage's last layer, and of the mean face moved by the least-squares
  similarity transform (scale, rotation, translation) onto that stage's prediction: equal numbers
  mean the model predicts a rigidly moved mean face and nothing of the face's shape;
* the same fit onto the ground truth: the best any "moved mean face" can do on these faces;
* per stage and layer, the cross-attention (heads averaged) weight on the landmark's own
  (supporting) patch, the largest weight and the entropy (uniform over N patches: log N).

Used for the diagnosis of SLPT's slow start in docs/experiments.md.
"""
from __future__ import annotations

import argparse
import math

import torch

from facemark import metrics
from facemark.data import load_dataset
from facemark.engine.checkpoint import load_model
from facemark.engine.data import CropDataset, model_input
from facemark.models.slpt import SLPT


def similarity_fit(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) ``source`` moved by the least-squares similarity transform onto ``target``, per sample."""
    source_centred = source - source.mean(1, keepdim=True)
    target_centred = target - target.mean(1, keepdim=True)
    # As complex numbers, the best similarity is target ~ a * source with a = <s, t> / <s, s>.
    s = torch.view_as_complex(source_centred.double().contiguous())
    t = torch.view_as_complex(target_centred.double().contiguous())
    scale_rotation = (s.conj() * t).sum(1, keepdim=True) / (s.abs() ** 2).sum(1, keepdim=True)
    moved = torch.view_as_real(scale_rotation * s).to(source.dtype)
    return moved + target.mean(1, keepdim=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a facemark SLPT checkpoint")
    parser.add_argument("--data", required=True, help="dataset root (the checkpoint's dataset format)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--faces", type=int, default=64, help="number of faces (the first of the split)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.checkpoint)
    model = loaded.model
    if not isinstance(model, SLPT):
        raise SystemExit(f"{args.checkpoint}: not an SLPT checkpoint ({loaded.method})")
    dataset_name = loaded.config.get("data", {}).get("dataset", "wflw")
    dataset = load_dataset(dataset_name, args.data, args.split)
    crops = CropDataset(dataset.records[: args.faces], loaded.layout, loaded.crop)
    samples = [crops[index] for index in range(len(crops))]
    images = model_input(torch.stack([sample["image"] for sample in samples]), loaded.crop, "cpu")
    target = torch.stack([sample["target"] for sample in samples])

    attention_maps: list[torch.Tensor] = []

    def record_attention(module, inputs, _output):
        query, key, _value = inputs
        attention_maps.append(module.attention_weights(query, key).mean(1))  # heads averaged

    if model.config.use_cross_attention:
        for layer in model.layers:
            layer.cross_attention.register_forward_hook(record_attention)
    with torch.inference_mode():
        output = model(images)

    def nme(points: torch.Tensor) -> float:
        """Mean NME_io in %, in crop space (metrics.nme with the layout's inter-ocular points)."""
        return 100 * float(metrics.nme(points.double().numpy(), target.double().numpy(), loaded.layout).mean())

    mean_face = model.mean_face.expand_as(target)
    print(f"{args.checkpoint}: {len(samples)} {args.split} faces, NME_io in crop space (%)")
    print(f"  mean face {nme(mean_face):.2f}; best similarity transform of the mean face onto the truth "
          f"{nme(similarity_fit(mean_face, target)):.2f}")
    for stage, prediction in enumerate(output.stages, start=1):
        last = prediction[:, -1]
        print(f"  stage {stage}: prediction {nme(last):.2f}; mean face moved by a similarity onto the "
              f"prediction {nme(similarity_fit(mean_face, last)):.2f}")
    num_points = target.shape[1]
    own_patch = torch.eye(num_points, dtype=torch.bool)
    for index, weights in enumerate(attention_maps):
        stage, layer = divmod(index, len(model.layers))
        entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean()
        print(f"  cross-attention stage {stage + 1} layer {layer + 1}: own patch {weights[:, own_patch].mean():.3f}, "
              f"largest {weights.max(-1).values.mean():.3f}, entropy {entropy:.2f} (uniform {math.log(num_points):.2f})")


if __name__ == "__main__":
    main()
