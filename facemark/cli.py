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

    def run(args: argparse.Namespace) -> int:
        from facemark.layouts import available_layouts, get_layout

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
        print(f"  inter-ocular pair: {layout.inter_ocular}")
        print(f"  inter-pupil: centroid of {list(layout.inter_pupil[0])} to centroid of {list(layout.inter_pupil[1])}")
        for group, indices in layout.groups.items():
            print(f"  {group:12s} {list(indices)}")
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
        choices=("wflw", "300w", "cofw"),
        default="wflw",
        help="native release format to write: wflw (98 points, default), 300w (68), cofw (29, plus COFW68 test labels)",
    )
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
                    format=args.format, workers=args.workers, progress=not args.no_progress,
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
    args = parser.parse_args(argv)
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
