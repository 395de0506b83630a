"""A trained checkpoint against the mean-shape baseline on a test split (as `facemark demo` compares).

The mean shape is the mean of the training split's landmarks in their normalised crops (the same
crop convention as the checkpoint), placed in every test crop and mapped back to the image; both
are scored with the same metrics (inter-ocular NME, FR and AUC at 0.10).

    python benchmarks/against_mean_shape.py runs/synthface_detr_cpu/best.pt data/synthface
"""
from __future__ import annotations

import argparse

from facemark.data import load_dataset
from facemark.engine.checkpoint import load_model
from facemark.engine.data import training_shapes
from facemark.engine.demo import mean_shape_predictions
from facemark.engine.evaluate import box_source_label, evaluate
from facemark.metrics import EvaluationResults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data_root")
    parser.add_argument("--dataset", default="wflw")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    loaded = load_model(args.checkpoint, device=args.device)
    train_set = load_dataset(args.dataset, args.data_root, args.train_split)
    test_set = load_dataset(args.dataset, args.data_root, args.split)
    mean_face = training_shapes(train_set, loaded.crop).crop.mean(axis=0)
    model = evaluate(args.checkpoint, args.data_root, dataset=args.dataset, split=args.split, device=args.device,
                     workers=0, progress=False)
    mean_shape = EvaluationResults.from_predictions(mean_shape_predictions(mean_face, test_set.records, loaded.crop),
                                                    test_set, model_name="mean shape",
                                                    box_source=box_source_label(loaded.crop))
    for name, results in ((f"{loaded.method} ({args.checkpoint})", model), ("mean shape of the training crops", mean_shape)):
        summary = results.summary()["all"]
        print(f"{name}: NME_io {100 * summary['NME_io']:.2f} %, FR_io@0.10 {100 * summary['FR_io@0.10']:.2f} %, "
              f"AUC_io@0.10 {summary['AUC_io@0.10']:.3f} ({summary['n']} faces, {args.dataset} {args.split})")


if __name__ == "__main__":
    main()
