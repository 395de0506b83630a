"""``facemark reproduce NAME``: one of the papers' experiments as a grid of ordinary training runs,
printed in the paper's layout with the published numbers beside the measured ones.

An :class:`Experiment` is a list of :class:`Cell` s; a cell is one run of :func:`facemark.engine.train.train`
with a recipe from ``configs/`` and ``key=value`` overrides, in its own run folder
(``<out>/<experiment>/<data>/runs/<cell>``: checkpoints, ``train.log``, ``metrics.csv``,
``results.json``) -- exactly what ``facemark train`` writes, and ``--runs`` prints those
``facemark train`` command lines. The data:

* ``data_root`` given: the real benchmark with the papers' recipes (``configs/slpt_hrnet_wflw.yaml``,
  ``configs/sdfl_hrnet_wflw.yaml``, ...), full length; for a GPU.
* otherwise SynthFace, generated once into ``<out>/data/`` in the benchmark's format, with the light
  CPU presets (``configs/synthface_*.yaml``) and a wall-clock budget per run
  (``optim.time_budget_minutes``), so that a small table finishes on a CPU in well under an hour.

A killed grid resumes where it stopped: a cell whose folder holds ``results.json`` (and, for
SLPT Table 5, ``stages.json``) is finished and read back, a cell with a ``last.pt`` continues with
``resume=True``, the others start. A finished cell whose recorded config differs from the planned
one is an error (its numbers would not belong to this table).

The published numbers come from ``facemark/resources/published_results.yaml`` only (paper, table
and row of each), never from this code. SLPT Table 8 trains nothing: it counts parameters and
multiply-adds with :mod:`facemark.models.complexity`.
"""
from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import yaml

__all__ = ["Cell", "Experiment", "EXPERIMENTS", "PUBLISHED_RESULTS", "load_published", "cell_commands",
           "run_experiment", "ReproduceResult", "complexity_rows", "prepare_synthface", "CONFIG_DIR",
           "SynthFaceSettings", "list_experiments"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
PUBLISHED_RESULTS = Path(__file__).resolve().parents[1] / "resources" / "published_results.yaml"
# The metrics of the SLPT tables, in the papers' units (NME and FR in %, AUC a fraction).
SLPT_METRICS = ("NME_io", "FR_io@0.10", "AUC_io@0.10")
SDFL_METRICS = ("NME_io",)
METRIC_LABELS = {"NME_io": "NME_io (%)", "FR_io@0.10": "FR_io@0.10 (%)", "AUC_io@0.10": "AUC_io@0.10"}
PERCENT_METRICS = ("NME_io", "FR_io@0.10")


# -- the experiments ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One training run of a grid.

    ``key``: the run folder's name and the row key in the published-results file. ``columns``:
    what distinguishes the cell, shown as the table's first columns (e.g. ``{"MSA": "w/o"}``).
    ``synth_config`` / ``real_config``: recipe file names in ``configs/`` for SynthFace and for the
    real benchmark; ``overrides`` apply to both, ``real_overrides`` to the real benchmark only.
    ``backbone``: checked for availability (``timm:`` backbones need timm)."""

    key: str
    label: str
    method: str
    synth_config: str
    real_config: str
    overrides: tuple[str, ...] = ()
    real_overrides: tuple[str, ...] = ()
    columns: Mapping[str, str] = field(default_factory=dict)
    backbone: str | None = None


@dataclass(frozen=True)
class Experiment:
    """A paper's table as a grid of cells. ``kind``: ``"train"`` (a grid of runs), ``"stages"``
    (SLPT Table 5: every stage of each run is scored) or ``"complexity"`` (SLPT Table 8: counts only).
    ``metrics``: the measured columns; ``plot``: ``"bars"`` (NME per row) or ``"k"`` (NME against k,
    one line per backbone: SDFL Fig. 8). ``dataset``: the benchmark (and SynthFace format)."""

    name: str
    title: str
    runs: str  # what it runs, for --list
    cells: tuple[Cell, ...]
    dataset: str = "wflw"
    kind: str = "train"
    metrics: tuple[str, ...] = SLPT_METRICS
    plot: str = "bars"


def _slpt_cell(key: str, label: str, columns: Mapping[str, str], *overrides: str) -> Cell:
    return Cell(key, label, "slpt", "synthface_slpt_fast.yaml", "slpt_hrnet_wflw.yaml", tuple(overrides),
                columns=dict(columns))


def _sdfl_cell(key: str, label: str, columns: Mapping[str, str], head: str, backbone: str, *overrides: str) -> Cell:
    """An SDFL-paper cell: the graph head (``sdfl``) or the FC baseline (``fc``) on ``backbone``.
    The paper trains every backbone from scratch; the HRNet recipes' ImageNet file fits only the HRNet."""
    method = "sdfl" if head == "graph" else "fc"
    real_overrides = () if backbone == "hrnet_w18c" else ("model.pretrained=null",)
    return Cell(key, label, method, f"synthface_{method}_cpu.yaml", f"{method}_hrnet_wflw.yaml",
                (f"model.backbone={backbone}",) + tuple(overrides), real_overrides, dict(columns), backbone)


def _loss_overrides(point_loss: str, relative: bool, parameters: Mapping | None = None) -> tuple[str, ...]:
    overrides = (f"loss.options.point_loss={point_loss}", f"loss.options.relative_weight={1.0 if relative else 0.0}")
    if parameters:
        overrides += ("loss.options.point_loss_parameters={" + ", ".join(f"{k}: {v}" for k, v in parameters.items())
                      + "}",)
    return overrides


_ON = {True: "w/", False: "w/o"}
_TABLE1_BACKBONES = {"mobilenet_v2": "mobilenet_v2", "efficientnet_b0": "timm:efficientnet_b0",
                     "efficientnet_b1": "timm:efficientnet_b1", "vgg16": "vgg16", "resnet18": "resnet18",
                     "resnet34": "resnet34", "res2net50": "timm:res2net50_26w_4s", "hrnet_w18c": "hrnet_w18c"}
_FIG8_BACKBONES = {"hrnet_w18c": "hrnet_w18c", "resnet34": "resnet34", "mobilenet_v2": "mobilenet_v2",
                   "efficientnet_b0": "timm:efficientnet_b0", "vgg16": "vgg16"}
_FIG8_K = (1, 3, 6, 12, 24)
_TABLE7_EPSILONS = (0.1, 0.2, 0.5, 1, 1.5, 2)
_LOSS_NAMES = {"l1": "L1", "soft_wing": "Soft Wing", "wing": "Wing"}


def _build_experiments() -> dict[str, Experiment]:
    experiments = [
        Experiment(
            "slpt-table1", "SLPT Table 1: SLPT against heatmap, coordinate and DETR-style regression (WFLW)",
            "4 runs: SLPT, the heatmap baseline, FC coordinate regression, the DETR-style transformer",
            (Cell("slpt", "SLPT", "slpt", "synthface_slpt_fast.yaml", "slpt_hrnet_wflw.yaml", columns={"method": "SLPT"}),
             Cell("heatmap", "Heatmap regression", "heatmap", "synthface_heatmap_cpu.yaml", "heatmap_hrnet_wflw.yaml",
                  columns={"method": "heatmap"}),
             Cell("fc", "Coordinate regression (FC)", "fc", "synthface_fc_cpu.yaml", "fc_hrnet_wflw.yaml",
                  columns={"method": "coordinate (FC)"}),
             Cell("detr", "DETR-style (16 x 16 tokens)", "detr", "synthface_detr_cpu.yaml", "detr_hrnet_wflw.yaml",
                  columns={"method": "DETR-style"}))),
        Experiment(
            "slpt-table5", "SLPT Table 5: number of coarse-to-fine stages, every stage scored (WFLW)",
            "4 SLPT runs with 1, 2, 3, 4 stages; NME/FR/AUC of each stage's prediction",
            tuple(_slpt_cell(f"stages{s}", f"Model with {s} stage{'s' if s > 1 else ''}", {"stages": str(s)},
                             f"model.options.num_stages={s}", "loss.options.stage_weights=null")
                  for s in (1, 2, 3, 4)),
            kind="stages"),
        Experiment(
            "slpt-table6", "SLPT Table 6: with and without MSA (self-attention) and MCA (cross-attention) (WFLW)",
            "4 SLPT runs: model.options.use_self_attention / use_cross_attention on and off",
            tuple(_slpt_cell(key, label, {"MSA": _ON[msa], "MCA": _ON[mca]},
                             f"model.options.use_self_attention={str(msa).lower()}",
                             f"model.options.use_cross_attention={str(mca).lower()}",
                             # without MCA the layers start from the representations (R + P), not
                             # from the queries (the CPU preset's initial_content) or zeros
                             *(() if mca else ("model.options.initial_content=zeros",)))
                  for key, label, msa, mca in (("no-msa-no-mca", "Model 1", False, False),
                                               ("msa-only", "Model 2", True, False),
                                               ("mca-only", "Model 3", False, True),
                                               ("msa-mca", "Model 4", True, True)))),
        Experiment(
            "slpt-table7", "SLPT Table 7: with and without structure encoding (WFLW)",
            "2 SLPT runs: model.options.use_structure_encoding false / true",
            tuple(_slpt_cell(key, label, {"structure encoding": _ON[on]},
                             f"model.options.use_structure_encoding={str(on).lower()}")
                  for key, label, on in (("without-structure-encoding", "w/o structure encoding", False),
                                         ("with-structure-encoding", "w/ structure encoding", True)))),
        Experiment(
            "slpt-table8", "SLPT Table 8: parameters and multiply-adds for 98, 68 and 29 points",
            "no training: counts parameters and multiply-adds of the released SLPT configuration (256 x 256 input)",
            (), kind="complexity", metrics=()),
        Experiment(
            "sdfl-table1", "SDFL Table I: FC head against the graph head (L-GRL), L1 and Soft Wing, per backbone (WFLW)",
            "32 runs: 8 backbones x {FC, graph head} x {L1, Soft Wing}, relative location loss on",
            tuple(_sdfl_cell(f"{name}-{head}-{loss}", f"{name}, {'L-GRL' if head == 'graph' else 'FC'}, "
                             f"{_LOSS_NAMES[loss]}",
                             {"backbone": name, "head": "L-GRL" if head == "graph" else "FC", "loss": _LOSS_NAMES[loss]},
                             head, backbone, *_loss_overrides(loss, True))
                  for name, backbone in _TABLE1_BACKBONES.items() for head in ("fc", "graph")
                  for loss in ("l1", "soft_wing")),
            metrics=SDFL_METRICS),
        Experiment(
            "sdfl-table6", "SDFL Table VI: head, loss terms and static/dynamic adjacency (WFLW, ResNet18)",
            "9 ResNet18 runs: FC or graph head x L1 or Soft Wing x relative loss on/off, dynamic or static adjacency",
            tuple(_sdfl_cell(key, f"column {index}",
                             {"head": "L-GRL" if head == "graph" else "FC", "loss": _LOSS_NAMES[loss],
                              "relative loss": _ON[relative], "adjacency": adjacency or "-"},
                             head, "resnet18", *_loss_overrides(loss, relative),
                             *((f"model.options.adjacency={adjacency}",) if adjacency else ()))
                  for index, (key, head, loss, relative, adjacency) in enumerate((
                      ("fc-l1", "fc", "l1", False, None),
                      ("fc-soft_wing", "fc", "soft_wing", False, None),
                      ("fc-l1-relative", "fc", "l1", True, None),
                      ("fc-soft_wing-relative", "fc", "soft_wing", True, None),
                      ("graph-l1-dynamic", "graph", "l1", False, "dynamic"),
                      ("graph-soft_wing-dynamic", "graph", "soft_wing", False, "dynamic"),
                      ("graph-l1-relative-dynamic", "graph", "l1", True, "dynamic"),
                      ("graph-soft_wing-relative-dynamic", "graph", "soft_wing", True, "dynamic"),
                      ("graph-soft_wing-relative-static", "graph", "soft_wing", True, "static")), start=1)),
            metrics=SDFL_METRICS),
        Experiment(
            "sdfl-table7", "SDFL Table VII: Wing (omega 20) and Soft Wing against epsilon, and L1 (WFLW, ResNet18)",
            "13 ResNet18 graph-head runs: L1; Wing and Soft Wing with epsilon 0.1, 0.2, 0.5, 1, 1.5, 2",
            (_sdfl_cell("l1", "L1", {"loss": "L1", "epsilon": "-"}, "graph", "resnet18", *_loss_overrides("l1", True)),)
            + tuple(_sdfl_cell(f"{loss}-{epsilon:g}", f"{_LOSS_NAMES[loss]}, epsilon {epsilon:g}",
                               {"loss": _LOSS_NAMES[loss], "epsilon": f"{epsilon:g}"}, "graph", "resnet18",
                               *_loss_overrides(loss, True, {"omega": 20, "epsilon": epsilon} if loss == "wing"
                                                else {"epsilon": epsilon}))
                    for loss in ("wing", "soft_wing") for epsilon in _TABLE7_EPSILONS),
            metrics=SDFL_METRICS),
        Experiment(
            "sdfl-fig8", "SDFL Fig. 8: NME against the number of neighbours k, per backbone (WFLW)",
            f"25 graph-head runs: k in {list(_FIG8_K)} x 5 backbones (the paper's plot has no printed numbers)",
            tuple(_sdfl_cell(f"{name}-k{k}", f"{name}, k = {k}", {"backbone": name, "k": str(k)}, "graph", backbone,
                             "model.options.graph=computed", f"model.options.neighbours={k}")
                  for name, backbone in _FIG8_BACKBONES.items() for k in _FIG8_K),
            metrics=SDFL_METRICS, plot="k"),
    ]
    return {experiment.name: experiment for experiment in experiments}


EXPERIMENTS: dict[str, Experiment] = _build_experiments()


def list_experiments() -> str:
    """The ``--list`` text: every experiment, what it runs and its published source."""
    published = load_published()
    lines = []
    for name, experiment in EXPERIMENTS.items():
        entry = published["experiments"][name]
        lines.append(f"{name:12s} {experiment.title}")
        lines.append(f"{'':12s}   runs: {experiment.runs}")
        lines.append(f"{'':12s}   published: {entry['table']} of {entry['paper'].upper()}, {entry['data']}")
    return "\n".join(lines)


# -- the published numbers ------------------------------------------------------------------------
def load_published(path: str | Path = PUBLISHED_RESULTS) -> dict:
    """Read and check the published-results file: every experiment cites a paper and a table, every
    row its row of that table; values are numbers (or null: plot only). Errors name the file and key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the published results: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("papers"), dict) or not isinstance(
            data.get("experiments"), dict):
        raise ValueError(f"{path}: expected top-level 'papers' and 'experiments' mappings")
    for name, entry in data["experiments"].items():
        where = f"{path}: experiments.{name}"
        for key in ("paper", "table", "data", "metrics", "rows"):
            if key not in entry:
                raise ValueError(f"{where}: missing {key!r}")
        if entry["paper"] not in data["papers"]:
            raise ValueError(f"{where}.paper: {entry['paper']!r} is not one of papers {list(data['papers'])}")
        for row_key, row in (entry["rows"] or {}).items():
            if not isinstance(row, dict) or not str(row.get("row", "")).strip():
                raise ValueError(f"{where}.rows.{row_key}: expected a mapping with the table's 'row' it cites")
            blocks = row.get("stages", [row.get("values")])
            for block in blocks:
                if block is None:
                    continue
                if not isinstance(block, dict) or not all(isinstance(v, (int, float)) for v in block.values()):
                    raise ValueError(f"{where}.rows.{row_key}: values must be numbers, got {block!r}")
    return data


# -- SynthFace -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthFaceSettings:
    """The SynthFace set a grid trains on (the same for every cell). 1,000 training images (900
    after the 10 % validation part) make an epoch of the CPU presets short enough that a few-minute
    budget holds several epochs on a 2-core CPU (the budget is checked after each epoch)."""

    num_train: int = 1000
    num_test: int = 250
    size: int = 128
    seed: int = 0

    def folder_name(self, dataset: str) -> str:
        return f"synthface-{dataset}-{self.num_train}x{self.num_test}-{self.size}px-seed{self.seed}"

    def describe(self, dataset: str) -> str:
        return (f"SynthFace in {dataset.upper()} format ({self.num_train} train / {self.num_test} test images, "
                f"{self.size} px, seed {self.seed})")


def prepare_synthface(out_dir: Path, dataset: str, settings: SynthFaceSettings, progress: bool = True,
                      say: Callable[[str], None] = print) -> Path:
    """The SynthFace set of ``settings`` under ``out_dir/data``: generated once, then reused (its
    folder name holds the settings; a folder without ``synthface.json`` is an interrupted write)."""
    from facemark.data.synthface import generate_dataset

    root = Path(out_dir) / "data" / settings.folder_name(dataset)
    if (root / "synthface.json").is_file():
        return root
    if root.exists():
        shutil.rmtree(root)  # our own cache folder, left by an interrupted generation
    say(f"generating {settings.describe(dataset)} into {root} (once; later grids reuse it)")
    generate_dataset(root, settings.num_train, settings.num_test, seed=settings.seed, size=settings.size,
                     format=dataset, workers=1, progress=progress)
    return root


# -- planning ------------------------------------------------------------------------------------
@dataclass
class _PlannedCell:
    cell: Cell
    run_dir: Path
    config_path: Path
    overrides: list[str]
    unavailable: str | None
    state: str  # "done", "resume", "start", "unavailable"


def _unavailable(cell: Cell, config_path: Path, methods: Mapping) -> str | None:
    if cell.method not in methods:
        return f"method {cell.method!r} is not available in this install (methods: {', '.join(methods)})"
    if not config_path.is_file():
        return f"recipe {config_path} is not in this install"
    if cell.backbone and cell.backbone.startswith("timm:") and importlib.util.find_spec("timm") is None:
        return f"backbone {cell.backbone} needs timm, which is not installed (pip install timm)"
    return None


def _cell_done(run_dir: Path, kind: str) -> bool:
    return (run_dir / "results.json").is_file() and (kind != "stages" or (run_dir / "stages.json").is_file())


def _plan(experiment: Experiment, grid_dir: Path, data_root: Path, real_data: bool, budget_minutes: float | None,
          device: str | None, extra_overrides: Sequence[str], methods: Mapping, config_dir: Path,
          only: Sequence[str] | None) -> list[_PlannedCell]:
    cells = list(experiment.cells)
    if only:
        unknown = [key for key in only if key not in {cell.key for cell in cells}]
        if unknown:
            raise ValueError(f"--cells: {', '.join(unknown)} not in {experiment.name}; its cells: "
                             f"{', '.join(cell.key for cell in cells)}")
        cells = [cell for cell in cells if cell.key in only]
    planned = []
    for cell in cells:
        config_path = config_dir / (cell.real_config if real_data else cell.synth_config)
        run_dir = grid_dir / "runs" / cell.key
        overrides = list(cell.overrides) + (list(cell.real_overrides) if real_data else [])
        overrides += [f"data.root={data_root}", f"runtime.output_dir={run_dir}", "runtime.report_best_and_last=true"]
        if budget_minutes is not None:
            overrides.append(f"optim.time_budget_minutes={budget_minutes:g}")
        if device is not None:
            overrides.append(f"runtime.device={device}")
        overrides += list(extra_overrides)
        unavailable = _unavailable(cell, config_path, methods)
        if unavailable:
            state = "unavailable"
        elif _cell_done(run_dir, experiment.kind):
            state = "done"
        elif (run_dir / "last.pt").is_file():
            state = "resume"
        else:
            state = "start"
        planned.append(_PlannedCell(cell, run_dir, config_path, overrides, unavailable, state))
    return planned


def _shown_path(path: Path) -> str:
    """A path as a user types it: relative to the current folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _train_command(planned: _PlannedCell) -> str:
    words = ["facemark", "train", _shown_path(planned.config_path), *planned.overrides]
    if planned.state == "resume":
        words.append("--resume")
    return " ".join(shlex.quote(word) for word in words)


def cell_commands(planned_cells: Sequence[_PlannedCell]) -> list[str]:
    """The ``facemark train`` line of each cell (``--runs``), with its state as a comment."""
    lines = []
    for planned in planned_cells:
        if planned.state == "unavailable":
            lines.append(f"# {planned.cell.key}: not available: {planned.unavailable}")
            continue
        note = {"done": "finished (results.json), not rerun", "resume": "half done: continues from last.pt",
                "start": "to run"}[planned.state]
        lines.append(f"# {planned.cell.key}: {note}")
        lines.append(_train_command(planned))
    return lines


# -- running one cell -------------------------------------------------------------------------------
def _check_recorded_config(planned: _PlannedCell, config) -> None:
    """A finished (or half-finished) cell must have been trained with the planned config."""
    from facemark.engine.config import config_to_dict

    recorded_path = planned.run_dir / "config.yaml"
    if not recorded_path.is_file():
        return
    recorded = yaml.safe_load(recorded_path.read_text(encoding="utf-8"))
    planned_dict = json.loads(json.dumps(config_to_dict(config)))  # tuples -> lists, as in the YAML
    differences = [f"{section}.{key}: {recorded.get(section, {}).get(key)!r} -> {value!r}"
                   for section, values in planned_dict.items() if isinstance(values, dict)
                   for key, value in values.items()
                   if (section, key) != ("runtime", "progress") and recorded.get(section, {}).get(key) != value]
    if differences:
        raise ValueError(f"{planned.run_dir} holds a run of another config ({'; '.join(differences[:4])}); "
                         "choose another --out or delete that folder to retrain the cell")


def _chosen_row(results: dict) -> dict:
    """The row of a run's results.json that the table reports: the epoch its protocol selected
    (best.pt on the validation or test split), else the last epoch."""
    rows = {row["protocol"]: row for row in results["rows"]}
    return rows.get("best", rows["last"])


def _score_stages(run_dir: Path, row: dict, methods: Mapping, device: str | None) -> list[dict]:
    """SLPT Table 5: the test-split summary of each stage's prediction (last layer) of the chosen checkpoint."""
    import torch

    from facemark.data import load_dataset
    from facemark.engine.checkpoint import load_model
    from facemark.engine.demo import stage_predictions
    from facemark.metrics import EvaluationResults

    target = device if device not in (None, "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(run_dir / row["checkpoint"], device=target, methods=methods)
    data = loaded.config["data"]
    test = load_dataset(data["dataset"], data["root"], data["test_split"])
    stages = stage_predictions(loaded.model, test.records, test.layout, loaded.crop, target)
    summaries = []
    for index, predictions in enumerate(stages):
        results = EvaluationResults.from_predictions(predictions, test, f"stage {index + 1}", "stages", subsets={})
        summaries.append(results.summary()["all"])
    return summaries


def _train_cell(planned: _PlannedCell, experiment: Experiment, methods: Mapping, device: str | None) -> None:
    from facemark.engine.config import load_config
    from facemark.engine.train import train

    config = load_config(planned.config_path, planned.overrides)
    if not (planned.run_dir / "results.json").is_file():
        train(config, resume=(planned.run_dir / "last.pt").is_file(), methods=methods)
    if experiment.kind == "stages":
        results = json.loads((planned.run_dir / "results.json").read_text())
        stages = _score_stages(planned.run_dir, _chosen_row(results), methods, device)
        (planned.run_dir / "stages.json").write_text(json.dumps({"stages": stages}, indent=1) + "\n")


def _cell_numbers(planned: _PlannedCell, experiment: Experiment) -> dict:
    """What a finished cell measured, in the papers' units (NME and FR in %), with its protocol."""
    results = json.loads((planned.run_dir / "results.json").read_text())
    row = _chosen_row(results)
    epoch_seconds = 0.0
    metrics_csv = planned.run_dir / "metrics.csv"
    if metrics_csv.is_file():
        import csv

        with metrics_csv.open(newline="") as file:
            epoch_seconds = sum(float(r["epoch_seconds"]) for r in csv.DictReader(file))

    def units(summary: Mapping) -> dict:
        return {metric: 100 * summary[metric] if metric in PERCENT_METRICS else summary[metric]
                for metric in ("NME_io", "FR_io@0.10", "AUC_io@0.10")}

    numbers = {"values": units(row["summary"]["all"]), "protocol": row["label"], "epoch": row["epoch"],
               "test_faces": row["summary"]["all"]["n"], "split": results["split"],
               "training_seconds": round(epoch_seconds, 1)}
    if experiment.kind == "stages":
        stages = json.loads((planned.run_dir / "stages.json").read_text())["stages"]
        numbers["stages"] = [units(summary) for summary in stages]
    return numbers


# -- SLPT Table 8 --------------------------------------------------------------------------------------
def complexity_rows(methods: Mapping | None = None) -> list[dict]:
    """Parameters and multiply-adds (fvcore-style, SLPT Table 8's count) of the released SLPT
    configuration (HRNetW18C-lite, 6 layers, 3 stages, 256 x 256 input) for 98, 68 and 29 points;
    the DETR-style rows when the ``detr`` method is in this install."""
    import torch

    from facemark.engine.methods import METHODS
    from facemark.layouts import get_layout
    from facemark.models.complexity import measure_complexity
    from facemark.models.slpt import SLPTConfig, build_slpt

    methods = METHODS if methods is None else methods
    rows = []
    image = torch.zeros(1, 3, 256, 256)
    for points, layout_name in ((98, "wflw98"), (68, "300w68"), (29, "cofw29")):
        # The counts do not depend on where the initial landmarks are: a flat mean face serves every layout.
        model = build_slpt(SLPTConfig(num_points=points), mean_face=torch.full((points, 2), 0.5))
        report = measure_complexity(model.eval(), image)
        rows.append({"key": f"slpt-{points}", "label": f"SLPT ({points} landmarks)",
                     "values": {"multiply_adds_G": report.multiply_adds / 1e9, "parameters_M": report.parameters / 1e6},
                     "exact": {"multiply_adds": report.multiply_adds, "parameters": report.parameters,
                               "flop_counter_flops": report.flops}})
    for points, layout_name in ((98, "wflw98"), (68, "300w68"), (29, "cofw29")):
        row = {"key": f"detr-{points}", "label": f"DETR-style ({points} landmarks)"}
        if "detr" not in methods:
            row["unavailable"] = "method 'detr' is not available in this install"
        else:
            try:
                layout = get_layout(layout_name)
                mean_face = torch.full((points, 2), 0.5)
                model = methods["detr"].build_model("hrnet_w18c_lite", layout, {"mean_face": mean_face.numpy()}, 256)
                report = measure_complexity(model.eval(), image)
                row["values"] = {"multiply_adds_G": report.multiply_adds / 1e9, "parameters_M": report.parameters / 1e6}
            except Exception as error:  # noqa: BLE001 - a method of another install: say why, do not stop the table
                row["unavailable"] = f"the detr method could not be built with its defaults here: {error}"
        rows.append(row)
    return rows


# -- output ------------------------------------------------------------------------------------------
def _format(metric: str, value) -> str:
    if value is None:
        return "-"
    if metric in ("AUC_io@0.10",):
        return f"{value:.3f}"
    return f"{value:.2f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _table_rows(experiment: Experiment, entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    columns = list(experiment.cells[0].columns) if experiment.cells else []
    if experiment.kind == "complexity":
        header = ["model", "multiply-adds (G), measured", "parameters (M), measured", "multiply-adds (G), paper",
                  "parameters (M), paper"]
        rows = []
        for entry in entries:
            measured, published = entry.get("values") or {}, entry.get("published") or {}
            rows.append([entry["label"]] + [f"{measured[k]:.2f}" if k in measured else "-"
                                            for k in ("multiply_adds_G", "parameters_M")]
                        + [f"{published[k]:.2f}" if k in published else "-" for k in ("multiply_adds_G", "parameters_M")])
        return header, rows
    if experiment.kind == "stages":
        stages = max(len(entry.get("published_stages") or []) for entry in entries) if entries else 0
        stages = max([stages] + [len(entry.get("stages") or []) for entry in entries])
        header = ["model", "numbers"] + [f"stage {s + 1} {METRIC_LABELS[m]}" for s in range(stages)
                                         for m in experiment.metrics]
        rows = []
        for entry in entries:
            for source, blocks in (("measured", entry.get("stages")), ("paper", entry.get("published_stages"))):
                cells = []
                for s in range(stages):
                    block = (blocks or [])[s] if blocks and s < len(blocks) else None
                    cells += [_format(m, block[m]) if block else "-" for m in experiment.metrics]
                label = entry["label"] if source == "measured" else ""
                note = source if entry.get("status") != "unavailable" or source == "paper" else "not available"
                rows.append([label, note] + cells)
        return header, rows
    header = ["row"] + columns + [f"{METRIC_LABELS[m]}, measured" for m in experiment.metrics] \
        + [f"{METRIC_LABELS[m]}, paper" for m in experiment.metrics] + ["epochs"]
    rows = []
    for entry in entries:
        measured, published = entry.get("values"), entry.get("published")
        if entry.get("status") == "unavailable":
            measured_cells = ["not available"] + ["-"] * (len(experiment.metrics) - 1)
        else:
            measured_cells = [_format(m, measured.get(m)) if measured else "-" for m in experiment.metrics]
        rows.append([entry["label"]] + [entry["columns"].get(c, "") for c in columns] + measured_cells
                    + [_format(m, published.get(m)) if published else "-" for m in experiment.metrics]
                    + [str(entry.get("epoch", "-"))])
    return header, rows


@dataclass
class ReproduceResult:
    """What one ``reproduce`` call produced: the table (text), its files and the rows."""

    table: str
    markdown_path: Path
    json_path: Path
    plot_path: Path | None
    rows: list[dict]
    wall_seconds: float


def _plot(experiment: Experiment, entries: list[dict], path: Path, data_label: str, paper_label: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [entry for entry in entries if entry.get("values")]
    if not measured:
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    if experiment.plot == "k":
        backbones: dict[str, list] = {}
        for entry in measured:
            backbones.setdefault(entry["columns"]["backbone"], []).append(
                (int(entry["columns"]["k"]), entry["values"]["NME_io"]))
        for backbone, points in backbones.items():
            points.sort()
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=backbone)
        axes.set_xlabel("number of neighbours k")
        axes.legend()
    else:
        labels = [entry["label"] for entry in measured]
        positions = range(len(measured))
        axes.bar([p - 0.2 for p in positions], [e["values"]["NME_io"] for e in measured], width=0.4, label="measured (this data)")
        published = [(p, e["published"]["NME_io"]) for p, e in zip(positions, measured)
                     if e.get("published") and "NME_io" in e["published"]]
        if published:
            axes.bar([p + 0.2 for p, _ in published], [v for _, v in published], width=0.4, label=f"paper ({paper_label})")
        axes.set_xticks(list(positions))
        axes.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        axes.legend()
    axes.set_ylabel("NME_io (%), test split")
    axes.set_title(f"{experiment.title}\n{data_label}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _write_outputs(experiment: Experiment, grid_dir: Path, entries: list[dict], published_entry: dict,
                   published: dict, data_label: str, protocol: str, wall_seconds: float) -> ReproduceResult:
    header, rows = _table_rows(experiment, entries)
    markdown = _markdown_table(header, rows)
    citation = f"{published_entry['table']} of {published['papers'][published_entry['paper']]}"
    if experiment.kind == "complexity":
        measured = ["- measured: the model's counts for one 256 x 256 input (facemark.models.complexity; "
                    "multiply-adds counted fvcore-style as the paper's Table 8: one multiply-add = one FLOP; "
                    "facemark also counts grid_sample's 4 per output element, which the authors' index "
                    "arithmetic does not have: 0.24 % of the 98-point total, docs/slpt.md)"]
    else:
        measured = [f"- measured on: {data_label}", f"- protocol: {protocol}"]
    notes = [f"# {experiment.title}", "", *measured,
             f"- metrics: {published_entry['metrics']}",
             f"- paper columns: {citation}; {published_entry['data']}"
             + (f"; {published_entry['note']}" if published_entry.get("note") else ""),
             f"- wall time of this call: {wall_seconds:.0f} s", ""]
    unavailable = [f"- {entry['label']}: not available: {entry['unavailable']}" for entry in entries
                   if entry.get("unavailable")]
    text = "\n".join(notes) + "\n" + markdown + "\n"
    if unavailable:
        text += "\n" + "\n".join(unavailable) + "\n"
    grid_dir.mkdir(parents=True, exist_ok=True)
    markdown_path = grid_dir / "table.md"
    markdown_path.write_text(text, encoding="utf-8")
    json_path = grid_dir / "table.json"
    json_path.write_text(json.dumps({
        "format": "facemark.reproduce", "version": 1, "experiment": experiment.name, "title": experiment.title,
        "data": data_label, "protocol": protocol, "metrics": published_entry["metrics"],
        "units": "NME and FR in %, AUC a fraction (the papers' units)",
        "published_source": {"paper": published["papers"][published_entry["paper"]],
                             "table": published_entry["table"], "data": published_entry["data"]},
        "wall_seconds": round(wall_seconds, 1), "rows": entries}, indent=1) + "\n")
    plot_path = None
    if experiment.kind != "complexity":
        plot_path = _plot(experiment, entries, grid_dir / ("nme_vs_k.png" if experiment.plot == "k" else "nme.png"),
                          data_label, f"{published_entry['table']}, {published_entry['data']}")
    return ReproduceResult(text, markdown_path, json_path, plot_path, entries, wall_seconds)


# -- the command ------------------------------------------------------------------------------------
def _say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"reproduce: {message}")


def _format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run_experiment(name: str | Experiment, out_dir: str | Path = "runs/reproduce", *, data_root: str | Path | None = None,
                   budget_minutes: float | None = None, device: str | None = None, overrides: Sequence[str] = (),
                   cells: Sequence[str] | None = None, list_runs: bool = False,
                   synthface: SynthFaceSettings = SynthFaceSettings(), methods: Mapping | None = None,
                   config_dir: str | Path = CONFIG_DIR, published: Mapping | None = None,
                   after_cell: Callable[[str], None] | None = None, progress: bool = True) -> ReproduceResult | list[str]:
    """Run (or resume) experiment ``name`` and write ``table.md``, ``table.json`` and a plot into
    ``<out_dir>/<name>/<synthface|data>/``. ``data_root``: the real benchmark (the papers' recipes);
    None: SynthFace with the CPU presets. ``budget_minutes``: ``optim.time_budget_minutes`` of every
    run. ``overrides``: extra ``key=value`` for every cell. ``cells``: run only these cell keys.
    ``list_runs``: return the ``facemark train`` lines instead of running. ``after_cell(key)`` is
    called after each cell that trained here (tests stop a grid there)."""
    from facemark.engine.methods import METHODS

    started = time.perf_counter()
    experiment = EXPERIMENTS[name] if isinstance(name, str) else name
    methods = METHODS if methods is None else methods
    published = load_published() if published is None else published
    published_entry = published["experiments"][experiment.name]
    out_dir = Path(out_dir)
    if experiment.kind == "complexity":
        if list_runs:
            return [f"# {experiment.name}: no training runs (counts of the models, computed in this process)"]
        entries = complexity_rows(methods)
        for entry in entries:
            row = published_entry["rows"].get(entry["key"])
            entry["published"], entry["published_row"] = (row["values"], row["row"]) if row else (None, None)
        return _write_outputs(experiment, out_dir / experiment.name, entries, published_entry, published,
                              "no data", "counts", time.perf_counter() - started)

    real_data = data_root is not None
    if real_data:
        data_root = Path(data_root)
        grid_dir = out_dir / experiment.name / "data"
        data_label = f"{experiment.dataset.upper()} at {data_root} (the papers' recipes in configs/)"
    else:
        grid_dir = out_dir / experiment.name / "synthface"
        data_root = out_dir / "data" / synthface.folder_name(experiment.dataset)
        data_label = synthface.describe(experiment.dataset)
    planned = _plan(experiment, grid_dir, data_root, real_data, budget_minutes, device, overrides, methods,
                    Path(config_dir), cells)
    if list_runs:
        lines = []
        if not real_data and not (data_root / "synthface.json").is_file():
            lines.append(f"facemark synth --out {shlex.quote(str(data_root))} --format {experiment.dataset} "
                         f"--train {synthface.num_train} --test {synthface.num_test} --size {synthface.size} "
                         f"--seed {synthface.seed}")
        return lines + cell_commands(planned)
    for item in planned:
        if item.cell.key not in published_entry["rows"]:
            raise ValueError(f"{PUBLISHED_RESULTS}: experiments.{experiment.name}.rows has no row {item.cell.key!r}")
    from facemark.engine.config import load_config

    for item in planned:  # before anything trains: every earlier run must belong to this table
        if item.state != "unavailable" and (item.run_dir / "config.yaml").is_file():
            _check_recorded_config(item, load_config(item.config_path, item.overrides))
    to_train = [item for item in planned if item.state in ("start", "resume")]
    if to_train and not real_data:
        prepare_synthface(out_dir, experiment.dataset, synthface, progress=progress, say=_say)
    budget_note = f", at most {budget_minutes:g} min of training each" if budget_minutes else ""
    _say(f"{experiment.name}: {len(planned)} cells, {len(to_train)} to train{budget_note}; "
         f"{sum(item.state == 'done' for item in planned)} finished before, "
         f"{sum(item.state == 'unavailable' for item in planned)} not available; runs in {grid_dir / 'runs'}")
    trained_times: list[float] = []
    for index, item in enumerate(planned, start=1):
        where = f"cell {index}/{len(planned)} {item.cell.key} ({item.cell.label})"
        if item.state == "unavailable":
            _say(f"{where}: not available: {item.unavailable}")
            continue
        if item.state == "done":
            _say(f"{where}: finished before, read from {item.run_dir / 'results.json'}")
            continue
        left = [other for other in to_train if planned.index(other) >= index - 1]
        if trained_times:  # measured: training, evaluation and the at-least-one-epoch rule included
            estimate = (f"about {_format_minutes(len(left) * sum(trained_times) / len(trained_times))} left for the "
                        "grid (at the mean time of its cells so far)")
        elif budget_minutes:
            estimate = (f"at least {_format_minutes(len(left) * 60 * budget_minutes)} left for the grid (the training "
                        "budgets; a run lasts at least one epoch, then the test split is scored)")
        else:
            estimate = "time left: known after the first cell"
        _say(f"{where}: {'continuing from last.pt' if item.state == 'resume' else 'training'}; {estimate}")
        cell_start = time.perf_counter()
        _train_cell(item, experiment, methods, device)
        trained_times.append(time.perf_counter() - cell_start)
        item.state = "done"
        _say(f"{where}: done in {_format_minutes(trained_times[-1])}")
        if after_cell is not None:
            after_cell(item.cell.key)

    entries = []
    for item in planned:
        row = published_entry["rows"][item.cell.key]
        entry = {"key": item.cell.key, "label": item.cell.label, "columns": dict(item.cell.columns),
                 "status": item.state, "run_dir": str(item.run_dir), "command": _train_command(item),
                 "published_row": f"{published_entry['table']}, {row['row']}",
                 "published": row.get("values"), "published_stages": row.get("stages")}
        if item.state == "unavailable":
            entry["unavailable"] = item.unavailable
        else:
            entry.update(_cell_numbers(item, experiment))
        entries.append(entry)
    protocols = sorted({entry["protocol"] for entry in entries if "protocol" in entry})
    budget_text = f"; at most {budget_minutes:g} min of training per run (optim.time_budget_minutes)" \
        if budget_minutes else ""
    protocol = (f"test split ({', '.join(sorted({str(e['split']) for e in entries if 'split' in e}))}); epoch picked by: "
                f"{'; '.join(protocols) or '-'}{budget_text}; NME_io normalised by the inter-ocular distance "
                f"(outer eye corners), FR and AUC at the threshold 0.10 of NME_io")
    return _write_outputs(experiment, grid_dir, entries, published_entry, published, data_label, protocol,
                          time.perf_counter() - started)
