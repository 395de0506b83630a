"""The command line as a user meets it: help, errors, and each wired subcommand on tiny inputs."""
import subprocess
import sys
from pathlib import Path

import pytest

from facemark.cli import main
from facemark.data import load_dataset


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "layouts", "synth", "train", "evaluate", "score", "predict", "export", "bench",
                    "reproduce"):
        assert command in out


def test_console_script_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "facemark.cli", "layouts"], capture_output=True, text=True, check=True)
    assert "wflw98" in result.stdout and "98 points" in result.stdout


def test_unknown_layout_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["layouts", "wflw99"])
    assert exit_info.value.code == 2
    assert "unknown layout 'wflw99'" in capsys.readouterr().err


def test_synth_writes_a_dataset_the_reader_loads(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "sf"), "--train", "2", "--test", "2", "--seed", "3", "--no-progress"]) == 0
    assert "train 2, test 2" in capsys.readouterr().out
    test = load_dataset("wflw", tmp_path / "sf", "test")
    assert len(test) == 2 and test[0].load_image().shape == (256, 256, 3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["synth"], "nothing to do"),
        (["synth", "--out", "x", "--train", "-1"], "--train must be >= 0"),
        (["synth", "--out", "x", "--format", "aflw"], "invalid choice"),
    ],
)
def test_synth_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err



def test_config_overrides_may_follow_the_options(capsys):
    # argparse alone refuses positionals after an option: `train CONFIG --print-config KEY=VALUE`.
    config = Path(__file__).resolve().parents[1] / "configs" / "synthface_slpt_cpu.yaml"
    assert main(["train", str(config), "--print-config", "optim.lr=0.5", "optim.epochs=3"]) == 0
    printed = capsys.readouterr().out
    assert "lr: 0.5" in printed and "epochs: 3" in printed
    with pytest.raises(SystemExit):
        main(["train", str(config), "--print-config", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
