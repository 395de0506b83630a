"""``facemark reproduce``: the published-numbers file, the grids, a killed grid resuming to the same
table, ``--runs``, methods missing from an install, SLPT Table 8's counts and per-stage scoring."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from engine_fixtures import TINY_METHODS, make_wflw_fixture, one_thread, tiny_config  # noqa: F401 (autouse fixture)
from facemark.cli import main
from facemark.engine.config import ConfigError, save_config
from facemark.engine.methods import METHODS
from facemark.engine.reproduce import (
    EXPERIMENTS,
    Cell,
    Experiment,
    SynthFaceSettings,
    load_published,
    prepare_synthface,
    run_experiment,
)
from facemark.layouts import get_layout
from facemark.models import losses


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    return make_wflw_fixture(tmp_path_factory.mktemp("wflw"), num_train=6, num_test=3)


@pytest.fixture()
def tiny_grid(tmp_path, fixture_root):
    """A 3-cell grid of the tiny method (two widths) and a method this install lacks, its recipe
    in a config folder of the test, and its published rows."""
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    save_config(tiny_config(fixture_root, tmp_path / "unused"), config_dir / "tiny.yaml")
    cells = tuple(Cell(f"width{width}", f"width {width}", "tiny", "tiny.yaml", "tiny.yaml",
                       (f"model.options.width={width}",), columns={"width": str(width)}) for width in (4, 8))
    cells += (Cell("absent", "a method of another install", "absent", "absent.yaml", "absent.yaml",
                   columns={"width": "-"}),)
    experiment = Experiment("tiny-grid", "A tiny grid", "3 tiny runs", cells)
    published = {"papers": {"p": "a paper"}, "experiments": {"tiny-grid": {
        "paper": "p", "table": "Table 0", "data": "the fixture", "metrics": "NME_io (%)",
        "rows": {"width4": {"row": "row 1", "values": {"NME_io": 4.0}},
                 "width8": {"row": "row 2", "values": {"NME_io": 3.0}},
                 "absent": {"row": "row 3", "values": {"NME_io": 2.0}}}}}}
    kwargs = dict(data_root=fixture_root, methods=TINY_METHODS, config_dir=config_dir, published=published,
                  progress=False)
    return experiment, kwargs


def _table_lines(result) -> list[str]:
    return [line for line in result.table.splitlines() if line.startswith("|")]


class _Killed(Exception):
    pass


def test_published_file_parses_and_every_cell_cites_its_row():
    published = load_published()
    for name, experiment in EXPERIMENTS.items():
        entry = published["experiments"][name]
        assert entry["table"] and entry["paper"] in published["papers"]
        for cell in experiment.cells:
            assert cell.key in entry["rows"], (name, cell.key)
            assert entry["rows"][cell.key]["row"].strip()
    table8 = published["experiments"]["slpt-table8"]["rows"]
    assert {"slpt-98", "slpt-68", "slpt-29"} <= set(table8)


def test_published_file_errors_name_the_key(tmp_path):
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump({"papers": {"p": "x"}, "experiments": {"e": {
        "paper": "p", "table": "T", "data": "d", "metrics": "m", "rows": {"r": {"values": {"NME_io": 1.0}}}}}}))
    with pytest.raises(ValueError, match=r"experiments\.e\.rows\.r: expected a mapping with the table's 'row'"):
        load_published(path)


def test_killed_grid_resumes_to_the_same_table(tiny_grid, tmp_path):
    experiment, kwargs = tiny_grid
    uninterrupted = run_experiment(experiment, tmp_path / "a", **kwargs)

    def stop(key):
        raise _Killed(key)

    with pytest.raises(_Killed):
        run_experiment(experiment, tmp_path / "b", after_cell=stop, **kwargs)
    runs = tmp_path / "b" / "tiny-grid" / "data" / "runs"
    assert (runs / "width4" / "results.json").is_file() and not (runs / "width8").exists()
    listed = run_experiment(experiment, tmp_path / "b", list_runs=True, **kwargs)
    assert "# width4: finished (results.json), not rerun" in listed and "# width8: to run" in listed
    first_cell = (runs / "width4" / "last.pt").stat().st_mtime_ns

    resumed = run_experiment(experiment, tmp_path / "b", **kwargs)
    assert (runs / "width4" / "last.pt").stat().st_mtime_ns == first_cell  # not retrained
    assert _table_lines(resumed) == _table_lines(uninterrupted)
    assert [row.get("values") for row in resumed.rows] == [row.get("values") for row in uninterrupted.rows]
    measured = resumed.rows[0]["values"]["NME_io"]
    assert 0 < measured < 100 and resumed.rows[0]["published"] == {"NME_io": 4.0}
    assert resumed.rows[0]["published_row"] == "Table 0, row 1"
    # The method of another install is named in the table and its notes, not a crash.
    assert resumed.rows[2]["status"] == "unavailable" and "'absent' is not available" in resumed.rows[2]["unavailable"]
    assert "| width 4 | 4 |" in resumed.table and "not available" in resumed.table
    saved = json.loads(resumed.json_path.read_text())
    assert saved["rows"][1]["key"] == "width8" and "inter-ocular" in saved["protocol"]
    assert resumed.plot_path is not None and resumed.plot_path.is_file()

    # A half-finished cell (last.pt, no results.json) continues with --resume to the same numbers.
    (runs / "width8" / "results.json").unlink()
    listed = run_experiment(experiment, tmp_path / "b", list_runs=True, **kwargs)
    assert any(line.startswith("facemark train") and line.endswith("--resume") for line in listed)
    again = run_experiment(experiment, tmp_path / "b", **kwargs)
    assert _table_lines(again) == _table_lines(uninterrupted)


def test_a_finished_cell_of_another_config_is_an_error(tiny_grid, tmp_path):
    experiment, kwargs = tiny_grid
    run_experiment(experiment, tmp_path, cells=["width4"], **kwargs)
    with pytest.raises(ValueError, match=r"runs/width4 holds a run of another config \(optim.lr: 0.01 -> 0.02"):
        run_experiment(experiment, tmp_path, cells=["width4"], overrides=["optim.lr=0.02"], **kwargs)


def test_runs_lists_commands_without_running(tmp_path, capsys):
    assert main(["reproduce", "slpt-table6", "--runs", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("facemark synth --out ") and "--format wflw" in lines[0]
    commands = [line for line in lines if line.startswith("facemark train ")]
    assert len(commands) == 4
    assert all("synthface_slpt_fast.yaml" in line and "optim.time_budget_minutes=3" in line for line in commands)
    assert "model.options.use_self_attention=false model.options.use_cross_attention=false" in commands[0]
    assert not any(tmp_path.iterdir())  # nothing ran


def test_list_and_unknown_experiment(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)
    with pytest.raises(SystemExit) as stopped:
        main(["reproduce", "slpt-table99"])
    assert stopped.value.code == 2 and "unknown experiment 'slpt-table99'" in capsys.readouterr().err


def test_table8_counts_the_released_configuration(tmp_path):
    result = run_experiment("slpt-table8", tmp_path)
    rows = {row["key"]: row for row in result.rows}
    assert rows["slpt-98"]["exact"]["parameters"] == 13_194_380  # paper: 13.19 M
    assert abs(rows["slpt-98"]["exact"]["multiply_adds"] / 6.12e9 - 1) < 0.01  # paper: 6.12 G
    assert rows["slpt-68"]["exact"]["parameters"] == 13_179_020
    assert "| SLPT (98 landmarks) | 6.14 | 13.19 | 6.12 | 13.19 |" in result.table
    assert "| SLPT (68 landmarks) |" in result.table and "| SLPT (29 landmarks) |" in result.table
    assert rows["detr-98"]["published"] == {"multiply_adds_G": 4.26, "parameters_M": 11.0}


def test_stage_table_scores_every_stage(fixture_root, tmp_path):
    """SLPT Table 5's kind: each stage of a (tiny) SLPT run is scored on the test split."""
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    save_config(tiny_config(fixture_root, tmp_path / "unused", "model.method=slpt", "model.backbone=mobilenet_v2_050",
                            "optim.epochs=1", "optim.milestones=[]"), config_dir / "slpt.yaml")
    options = ("model.options.num_layers=1", "model.options.embed_dim=16", "model.options.num_heads=2",
               "model.options.feedforward_dim=16", "model.options.patch_samples=2", "loss.options.stage_weights=null")
    cells = tuple(Cell(f"stages{s}", f"{s} stages", "slpt", "slpt.yaml", "slpt.yaml",
                       (f"model.options.num_stages={s}",) + options, columns={"stages": str(s)}) for s in (1, 2))
    experiment = Experiment("slpt-table5", "stages", "2 runs", cells, kind="stages")
    result = run_experiment(experiment, tmp_path / "out", data_root=fixture_root, config_dir=config_dir,
                            published=load_published(), progress=False)
    two = result.rows[1]
    assert len(result.rows[0]["stages"]) == 1 and len(two["stages"]) == 2
    assert two["stages"][-1]["NME_io"] == pytest.approx(two["values"]["NME_io"])  # the last stage is the output
    assert two["published_stages"][1]["NME_io"] == 4.27  # paper Table 5, 2 stages, stage 2
    assert "stage 2 NME_io (%)" in result.table


def test_synthface_is_generated_once(tmp_path):
    settings = SynthFaceSettings(num_train=3, num_test=3, size=64, seed=1)
    root = prepare_synthface(tmp_path, "wflw", settings, progress=False, say=lambda message: None)
    stamp = (root / "synthface.json").stat().st_mtime_ns
    assert prepare_synthface(tmp_path, "wflw", settings, progress=False, say=lambda message: None) == root
    assert (root / "synthface.json").stat().st_mtime_ns == stamp


def test_point_loss_parameters_reach_the_loss():
    layout = get_layout("wflw98")
    statistics = {"neighbourhood": torch.zeros(98, 3, dtype=torch.long).numpy()}
    loss = METHODS["sdfl"].build_loss(layout, statistics, 128, point_loss="wing", relative_weight=0.0,
                                      point_loss_parameters={"omega": 20, "epsilon": 0.1})
    prediction, target = torch.full((1, 98, 2), 0.5), torch.full((1, 98, 2), 0.52)
    expected = losses.wing_loss((prediction - target) * 128, omega=20, epsilon=0.1).mean()
    assert loss(SimpleNamespace(landmarks=prediction), target) == pytest.approx(float(expected))
    with pytest.raises(ConfigError, match="loss.options.point_loss_parameters.eps"):
        METHODS["sdfl"].build_loss(layout, statistics, 128, point_loss="wing", point_loss_parameters={"eps": 1})
    with pytest.raises(ConfigError, match="epsilon must be > 0"):
        METHODS["sdfl"].build_loss(layout, statistics, 128, point_loss="soft_wing",
                                   point_loss_parameters={"epsilon": 0})
