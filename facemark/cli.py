"""The ``facemark`` command line: one subcommand per job.

Each subcommand imports its implementation lazily so that ``facemark --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from facemark.errors import CommandError, WeightsError

__all__ = ["main", "build_parser"]


# --- facemark layouts -------------------------------------------------------------------------
def _add_layouts(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.add_argument(
        "name",
        nargs="?",
        help="a built-in layout (wflw98, 300w68, cofw29) or a layout YAML file to describe; omit to list the built-ins",
    )
    parser.add_argument("--check", metavar="FILE", type=Path,
                        help="validate a layout YAML file (docs/own_data.md): every index in range, the flip "
                             "permutation its own inverse, the normaliser's points given; exit 2 with the first "
                             "error, else describe it")

    def run(args: argparse.Namespace) -> int:
        from facemark.layouts import available_layouts, get_layout, load_layout

        if args.check is not None:
            if args.name is not None:
                raise CommandError("give either a layout to describe or --check FILE, not both")
            try:
                layout = load_layout(args.check)
            except (ValueError, FileNotFoundError) as error:
                raise CommandError(str(error)) from None
            print(f"{args.check}: a valid layout")
            args.name = layout
        if args.name is None:
            for name in available_layouts():
                layout = get_layout(name)
                print(f"{name:8s} {layout.num_points:3d} points  (layout {layout.name})")
            return 0
        try:
            layout = get_layout(args.name)
        except (KeyError, ValueError, FileNotFoundError) as error:
            raise CommandError(str(error).strip('"')) from None
        print(f"{layout.name}: {layout.num_points} points")
        print(f"  NME normalisation: {layout.normalisation}")
        print(f"  inter-ocular pair: {list(layout.inter_ocular) if layout.inter_ocular is not None else 'none'}")
        if layout.inter_pupil is not None:
            print(f"  inter-pupil: centroid of {list(layout.inter_pupil[0])} to centroid of {list(layout.inter_pupil[1])}")
        else:
            print("  inter-pupil: none")
        for group, indices in layout.groups.items():
            print(f"  {group:12s} {list(indices)}")
        if layout.flip_permutation is None:
            print("  flip permutation: none (training turns flip augmentation off)")
        else:
            print(f"  flip permutation: {list(layout.flip_permutation)}")
        return 0

    return run


# --- facemark synth ---------------------------------------------------------------------------
def _add_synth(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.add_argument("--out", type=Path, help="folder to write the dataset to (created)")
    parser.add_argument("--train", type=int, default=1000, help="training images (default: 1000)")
    parser.add_argument("--test", type=int, default=250, help="test images (default: 250)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; same seed, same files (default: 0)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    parser.add_argument(
        "--format",
        choices=("wflw", "300w", "cofw", "manifest", "pts_folder", "coco"),
        default="wflw",
        help="format to write: a benchmark's release format, wflw (98 points, default), 300w (68), cofw (29, plus "
             "COFW68 test labels); or an own-data format (docs/own_data.md), manifest (train.csv, test.csv), "
             "pts_folder (train/, test/ with .pts files) or coco (train.json, test.json), with --layout's points "
             "and a layout.yaml",
    )
    parser.add_argument("--layout", choices=("wflw98", "300w68", "cofw29", "face5"), default="wflw98",
                        help="own-data formats only: the points to write (face5: eyes, nose tip, mouth corners; "
                             "default wflw98)")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes (default: 1)")
    parser.add_argument("--preview", type=Path, metavar="FILE.png", help="write a contact sheet of 16 samples with landmarks drawn")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        if args.out is None and args.preview is None:
            raise CommandError("nothing to do: give --out DIR (write a dataset) and/or --preview FILE.png")
        for name in ("train", "test", "workers", "size"):
            if getattr(args, name) < (1 if name in ("workers", "size") else 0):
                raise CommandError(f"--{name} must be {'>= 1' if name in ('workers', 'size') else '>= 0'}, got {getattr(args, name)}")
        from facemark.data.synthface import generate_dataset, write_preview

        try:
            if args.out is not None:
                summary = generate_dataset(
                    args.out, args.train, args.test, seed=args.seed, size=args.size,
                    format=args.format, workers=args.workers, progress=not args.no_progress, layout=args.layout,
                )
                counts = ", ".join(f"{split} {info['images']}" for split, info in summary["splits"].items())
                print(f"wrote a SynthFace dataset in {args.format} format to {args.out} ({counts} images)")
            if args.preview is not None:
                print(f"wrote preview {write_preview(args.preview, num=16, seed=args.seed, size=args.size)}")
        except ValueError as error:
            raise CommandError(str(error)) from None
        return 0

    return run


# --- facemark train / evaluate / score (facemark.engine.commands) --------------------------------
def _add_train(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    from facemark.engine.commands import add_train_arguments

    return add_train_arguments(parser)


def _add_evaluate(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    from facemark.engine.commands import add_evaluate_arguments

    return add_evaluate_arguments(parser)


def _add_score(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    from facemark.engine.commands import add_score_arguments

    return add_score_arguments(parser)


def _add_reproduce(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    from facemark.engine.commands import add_reproduce_arguments

    return add_reproduce_arguments(parser)


def _add_demo(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    from facemark.engine.demo import add_demo_arguments

    return add_demo_arguments(parser)


# --- facemark predict / export / bench (facemark.inference.commands) -----------------------------
def _add_predict(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    from facemark.inference.commands import add_predict_arguments, run_predict

    add_predict_arguments(parser)
    return run_predict


def _add_export(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    from facemark.inference.commands import add_export_arguments, run_export

    add_export_arguments(parser)
    return run_export


def _add_bench(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    from facemark.inference.commands import add_bench_arguments, run_bench

    add_bench_arguments(parser)
    return run_bench


# --- facemark explain (facemark.explain.commands) -----------------------------------------------
def _add_explain(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    from facemark.explain.commands import add_explain_arguments

    return add_explain_arguments(parser)


_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]]] = {
    "demo": ("the main job on built-in data: generate SynthFace, train SLPT and an FC baseline, compare them with the mean shape, write a report", _add_demo),
    "layouts": ("list the landmark layouts or describe one", _add_layouts),
    "synth": ("generate a SynthFace dataset in a benchmark's native format, or a preview sheet", _add_synth),
    "train": ("train a model from a YAML recipe with key=value overrides", _add_train),
    "evaluate": ("evaluate a checkpoint on a benchmark split (table, CED plot, predictions file)", _add_evaluate),
    "reproduce": ("run one of the papers' experiments as a grid of training runs; its table beside the published numbers", _add_reproduce),
    "score": ("re-score a predictions file against a benchmark's ground truth, without the model", _add_score),
    "predict": ("landmarks for image files, folders and videos (JSON/CSV, drawn images)", _add_predict),
    "export": ("export a model to ONNX or TorchScript", _add_export),
    "explain": ("the SLPT / SDFL papers' figures for a checkpoint: patches, attention, encodings, graphs, occlusion", _add_explain),
    "bench": ("time a model: latency and throughput per backend, detection separately", _add_bench),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from facemark import __version__

    parser = argparse.ArgumentParser(
        prog="facemark",
        description="Facial landmark detection: SLPT and SDFL, paper-exact evaluation, native dataset readers.",
    )
    parser.add_argument("--version", action="version", version=f"facemark {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {}
    for name, (summary, add) in _COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        sub.set_defaults(run=add(sub))
        commands[name] = sub
    return parser, commands


def _print_dataset_warnings(command: str) -> None:
    """Show dataset warnings as ``facemark <command>: warning: ...`` lines (without Python's
    source-line decoration); other warnings keep the default display."""
    from facemark.data.records import DatasetWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DatasetWarning):
            print(f"facemark {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args, unparsed = parser.parse_known_args(argv)
    if unparsed:
        # argparse cannot take positionals after an option (`train CONFIG --resume KEY=VALUE`): config
        # overrides given after the options are still overrides; anything else is an argument error.
        if hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in unparsed):
            args.overrides = [*args.overrides, *unparsed]
        else:
            (commands[args.command] if args.command else parser).error(f"unrecognized arguments: {' '.join(unparsed)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            _print_dataset_warnings(args.command)
            return int(args.run(args) or 0)
    except (CommandError, WeightsError) as error:
        # The user's mistake, not facemark's: one line, no traceback, no usage text (argparse's
        # own errors, about the arguments themselves, print the usage).
        print(f"{commands[args.command].prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
