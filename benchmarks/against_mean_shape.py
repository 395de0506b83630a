"""A trained checkpoint against the mean-shape baseline on a test split (as `facemark demo` compares).

The mean shape is the mean of the training faces' landmarks in their normalised crops (the same
crop convention as the checkpoint), placed in every test crop and mapped back to the image; both
are scored with the same metrics (NME, FR and AUC at 0.10 under the layout's normalisation).

By default the faces are the run's own, from the checkpoint's training config: its training faces
(without the validation faces it held out) and its test faces (own data too, with its layout, and a
test split carved by data.test_fraction). --dataset/--train-split/--split name others.

    python benchmarks/against_mean_shape.py runs/synthface_detr_cpu/best.pt data/synthface
    python benchmarks/against_mean_shape.py runs/own_slpt_fast/best.pt data/own
"""
from __future__ import annotations

import argparse

from facemark.data import OWN_FORMATS, load_dataset
from facemark.engine.checkpoint import load_model
from facemark.engine.data import carve_validation, config_splits, training_shapes
from facemark.engine.demo import mean_shape_predictions
from facemark.engine.evaluate import box_source_label, evaluate
from facemark.metrics import NORMALISATIONS, EvaluationResults


def run_faces(loaded, data_root: str):
    """The training faces (validation part removed, as training did) and test faces of the
    checkpoint's run, read from ``data_root``."""
    data = {**loaded.config["data"], "root": str(data_root)}
    own = str(data["dataset"]).lower() in OWN_FORMATS
    train_full, test_set = config_splits(data, layout=loaded.layout if own else None)
    train_set = train_full
    if data.get("val_split") is None and data.get("val_fraction", 0) > 0 and loaded.config["runtime"].get("select_on") != "test":
        train_set = carve_validation(train_full, data["val_fraction"], loaded.config["runtime"].get("seed", 0))[0]
    return train_set, test_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data_root")
    parser.add_argument("--dataset", default=None, help="default: the faces of the checkpoint's training config")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    loaded = load_model(args.checkpoint, device=args.device)
    if args.dataset is None:
        train_set, test_set = run_faces(loaded, args.data_root)
        model = evaluate(args.checkpoint, args.data_root, device=args.device, workers=0, progress=False)
    else:
        train_set = load_dataset(args.dataset, args.data_root, args.train_split)
        test_set = load_dataset(args.dataset, args.data_root, args.split)
        model = evaluate(args.checkpoint, args.data_root, dataset=args.dataset, split=args.split, device=args.device,
                         workers=0, progress=False)
    mean_face = training_shapes(train_set, loaded.crop).crop.mean(axis=0)
    mean_shape = EvaluationResults.from_predictions(mean_shape_predictions(mean_face, test_set.records, loaded.crop),
                                                    test_set, model_name="mean shape",
                                                    box_source=box_source_label(loaded.crop))
    for name, results in ((f"{loaded.method} ({args.checkpoint})", model),
                          (f"mean shape of the {len(train_set)} training crops", mean_shape)):
        summary = results.summary()["all"]
        suffix = NORMALISATIONS[test_set.layout.normalisation]  # the layout's own normaliser, e.g. io
        print(f"{name}: NME_{suffix} {100 * summary[f'NME_{suffix}']:.2f} %, FR_{suffix}@0.10 "
              f"{100 * summary[f'FR_{suffix}@0.10']:.2f} %, AUC_{suffix}@0.10 {summary[f'AUC_{suffix}@0.10']:.3f} "
              f"({summary['n']} faces, {test_set.name} {test_set.split})")


if __name__ == "__main__":
    main()
