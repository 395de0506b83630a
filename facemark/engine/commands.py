"""The command-line front ends of the engine: ``facemark train``, ``facemark evaluate``, ``facemark score``.

Each ``add_*_arguments(parser)`` adds the subcommand's arguments (every one with a help text) to
an ``argparse`` parser and returns the function that runs it (``run(args) -> exit code``). Only
``argparse`` is imported here; torch and the engine are imported when a command runs, so
``facemark --help`` stays fast. User errors are raised as ``facemark.errors.CommandError``.
"""
from __future__ import annotations

import argparse
from typing import Callable

__all__ = ["add_train_arguments", "add_evaluate_arguments", "add_score_arguments", "add_reproduce_arguments"]

# facemark.data.DATASET_SPLITS and OWN_FORMATS (not imported: it is slow)
DATASETS = ("wflw", "300w", "cofw", "cofw68", "manifest", "pts_folder", "coco")


def add_train_arguments(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``facemark train CONFIG [KEY=VALUE ...] [--resume] [--select-on val|test] ...``"""
    parser.add_argument("config", help="a training recipe (YAML), e.g. configs/slpt_hrnet_wflw.yaml; "
                                       "'base: other.yaml' inside it inherits from another recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="replace any config value with a dotted key, e.g. optim.lr=5e-4 optim.epochs=10 "
                             "data.root=/data/WFLW optim.milestones=[80,100] model.options.num_layers=12 "
                             "(values are YAML: numbers, true/false, null, [lists]); an unknown key is an error "
                             "listing the allowed ones")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in runtime.output_dir from its last.pt (weights, optimiser, "
                             "schedule, RNG states and data order restored: the result equals an uninterrupted run)")
    parser.add_argument("--resume-from", default=None, metavar="FILE",
                        help="continue the run in runtime.output_dir from this checkpoint instead of last.pt (e.g. "
                             "its best.pt when last.pt is damaged); implies --resume")
    parser.add_argument("--select-on", choices=("val", "test"), default=None,
                        help="split that picks best.pt: 'val' (default: a held-out part of the training set) or "
                             "'test' (the SLPT/SDFL authors' practice; logged as a warning, test numbers become "
                             "optimistic). Same as runtime.select_on=...")
    parser.add_argument("--output-dir", default=None,
                        help="where checkpoints and logs go (same as runtime.output_dir=...)")
    parser.add_argument("--device", default=None,
                        help="auto (CUDA when available), cpu, cuda or cuda:N (same as runtime.device=...)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (recipe + overrides) as YAML and exit without training")

    def run(args: argparse.Namespace) -> int:
        import yaml

        from facemark.errors import CommandError
        from facemark.engine.config import ConfigError, config_to_dict, load_config
        from facemark.engine.train import TrainingDiverged, train

        overrides = list(args.overrides)
        for value, key in ((args.select_on, "runtime.select_on"), (args.output_dir, "runtime.output_dir"),
                           (args.device, "runtime.device")):
            if value is not None:
                overrides.append(f"{key}={value}")
        try:
            config = load_config(args.config, overrides)
            if args.print_config:
                from facemark.engine.methods import METHODS, check_method_options, get_method

                # The printed config must be one that trains: check the method's option names too.
                check_method_options(get_method(config.model.method, METHODS), config.model.options, config.loss.options)
                print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
                return 0
            result = train(config, resume=args.resume, resume_from=args.resume_from)
        except (ConfigError, FileNotFoundError, FileExistsError, TrainingDiverged, ValueError) as error:
            raise CommandError(str(error)) from None
        if result.report_table is not None:
            print(result.report_table)
            print(f"both rows in {result.report_path} (and results.md beside it)")
        if result.best_checkpoint is not None:
            data = config.data
            print(f"best checkpoint: {result.best_checkpoint}")
            if data.test_fraction > 0:  # the test faces are carved from the training file: the config says which
                print(f"evaluate it with: facemark evaluate {result.best_checkpoint} --data {data.root}")
            else:
                print(f"evaluate it with: facemark evaluate {result.best_checkpoint} --data {data.root} "
                      f"--dataset {data.dataset} --split {data.test_split}")
        return 0

    return run


def _add_data_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--data", required=True, metavar="ROOT",
                        help="folder the benchmark was unpacked into (e.g. data/WFLW); see docs/datasets.md")
    parser.add_argument("--dataset", default=None, choices=DATASETS,
                        help=f"benchmark to score on (default: {default})")
    parser.add_argument("--split", default=None,
                        help="split of the benchmark: test or test/<subset> (WFLW), full, common, challenging "
                             "(300W), test (COFW, COFW68); own data: the manifest / COCO file or .pts folder, "
                             f"relative to --data (default: {default})")
    parser.add_argument("--output-dir", default=None,
                        help="folder for results.json, results.md and ced.png")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``facemark evaluate CHECKPOINT --data ROOT [--dataset wflw --split test] ...``"""
    parser.add_argument("checkpoint", help="a facemark checkpoint (best.pt or last.pt of a training run); the model, "
                                           "its layout and its crop convention are rebuilt from this file alone. "
                                           "Also a released SLPT (WFLW_6_layer.pth) or HRNet facial-landmark "
                                           "(HR18-WFLW.pth) file, with that release's crop; give --dataset")
    _add_data_arguments(parser, "the dataset and test split of the checkpoint's training config; output folder: "
                                "<checkpoint folder>/eval_<dataset>_<split>")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=32, help="faces per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="image-loading worker processes (default 2; 0 = none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from facemark.errors import CommandError
        from facemark.engine.evaluate import default_output_dir, evaluate

        try:
            results = evaluate(args.checkpoint, args.data, dataset=args.dataset, split=args.split,
                               output_dir=args.output_dir, device=args.device, batch_size=args.batch_size,
                               workers=args.workers, progress=not args.no_progress)
        except (FileNotFoundError, ValueError, RuntimeError) as error:
            raise CommandError(str(error)) from None
        output_dir = args.output_dir or default_output_dir(Path(args.checkpoint), results.dataset, results.split)
        print(results.table())
        print(f"predictions.json, results.json, results.md and ced.png in {output_dir}")
        return 0

    return run


def add_score_arguments(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``facemark score PREDICTIONS --data ROOT [--dataset ... --split ...] [--output-dir DIR]``"""
    parser.add_argument("predictions", help="a predictions file written by facemark evaluate (predictions.json): "
                                            "identifiers and landmarks in original-image pixels")
    _add_data_arguments(parser, "the dataset and split recorded in the predictions file")
    parser.add_argument("--splits", default=None, metavar="FILE",
                        help="own data: the splits.json of the training run whose held-out faces were predicted "
                             "(a split such as train.json[test], carved by data.test_fraction); default: the one "
                             "beside the predictions file or in its parent folder (a run folder holds the folder "
                             "facemark evaluate writes)")

    def run(args: argparse.Namespace) -> int:
        from facemark.errors import CommandError
        from facemark.engine.evaluate import score

        try:
            results = score(args.predictions, args.data, dataset=args.dataset, split=args.split,
                            output_dir=args.output_dir, splits_file=args.splits)
        except (FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from None
        print(results.table())
        if args.output_dir:
            print(f"results.json, results.md and ced.png in {args.output_dir}")
        return 0

    return run


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """``facemark reproduce NAME [--data ROOT] [--budget-minutes M] [--runs] ...``, ``facemark reproduce --list``"""
    parser.add_argument("name", nargs="?", help="the experiment, e.g. slpt-table6 (see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments and what each runs")
    parser.add_argument("--runs", action="store_true",
                        help="print the facemark train command of every cell (and whether it is finished, half "
                             "done or to run) without running anything")
    parser.add_argument("--data", default=None, metavar="ROOT",
                        help="the real benchmark's folder (e.g. data/WFLW): the papers' recipes, full length (for "
                             "a GPU). Default: SynthFace, generated once into OUT/data, with the CPU presets")
    parser.add_argument("--out", default="runs/reproduce",
                        help="output folder (default runs/reproduce): OUT/NAME/<synthface|data>/ holds table.md, "
                             "table.json, the plot and runs/<cell>/ (one ordinary run folder per cell)")
    parser.add_argument("--budget-minutes", type=float, default=None, metavar="M",
                        help="wall-clock training budget of each run (optim.time_budget_minutes); default: 3 on "
                             "SynthFace, none (the recipe's epochs) with --data")
    parser.add_argument("--cells", default=None, metavar="KEY,KEY",
                        help="run only these cells of the grid (their keys are in --runs)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (same as runtime.device=...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every cell, e.g. --set optim.epochs=2 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(args: argparse.Namespace) -> int:
        from facemark.errors import CommandError
        from facemark.engine.config import ConfigError
        from facemark.engine.reproduce import EXPERIMENTS, list_experiments, run_experiment
        from facemark.engine.train import TrainingDiverged

        if args.list:
            print(list_experiments())
            return 0
        if args.name is None:
            raise CommandError("name an experiment (facemark reproduce --list shows them)")
        if args.name not in EXPERIMENTS:
            raise CommandError(f"unknown experiment {args.name!r}; expected one of {', '.join(EXPERIMENTS)}")
        if args.budget_minutes is not None and args.budget_minutes <= 0:
            raise CommandError(f"--budget-minutes must be > 0, got {args.budget_minutes:g}")
        budget = args.budget_minutes if args.budget_minutes is not None or args.data else 3.0
        overrides = list(args.overrides)
        if args.no_progress:
            overrides.append("runtime.progress=false")
        cells = [key.strip() for key in args.cells.split(",") if key.strip()] if args.cells else None
        try:
            result = run_experiment(args.name, args.out, data_root=args.data, budget_minutes=budget,
                                    device=args.device, overrides=overrides, cells=cells, list_runs=args.runs,
                                    progress=not args.no_progress)
        except (ConfigError, FileNotFoundError, FileExistsError, TrainingDiverged, ValueError) as error:
            raise CommandError(str(error)) from None
        if args.runs:
            print("\n".join(result))
            return 0
        print(result.table)
        files = [result.markdown_path, result.json_path] + ([result.plot_path] if result.plot_path else [])
        print(f"written: {', '.join(str(path) for path in files)}")
        return 0

    return run
