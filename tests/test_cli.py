"""The command line as a user meets it: help, errors, and each wired subcommand on tiny inputs."""
import subprocess
import sys

import pytest

from facemark.cli import main
from facemark.data import load_dataset


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "layouts", "synth", "train", "evaluate", "score", "predict", "export", "bench"):
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


def test_lower_layers_do_not_import_the_command_line():
    # facemark.cli imports the engine and inference; were they to import it back (e.g. for
    # CommandError, which lives in facemark.errors), the layers would form an import cycle.
    import ast
    from pathlib import Path

    import facemark

    package = Path(facemark.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.name in ("cli.py", "__main__.py") and path.parent == package:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            if any(name == "facemark.cli" or name.startswith("facemark.cli.") for name in names):
                offenders.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    assert offenders == []


def test_make_test_prints_the_summary_line():
    # CI runs `make test`: its log must say how many tests ran ("N passed"). pytest's -q from
    # pyproject's addopts plus another -q on the command line (-qq) drops that line.
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    makefile = (root / "Makefile").read_text().splitlines()
    recipe = makefile[makefile.index(next(line for line in makefile if line.startswith("test:"))) + 1].strip()
    command = shlex.split(recipe.replace("$(BIN)/python", shlex.quote(sys.executable)))
    assert command[-1] == "tests"
    command[-1] = "tests/test_cli.py::test_help_lists_the_commands"
    result = subprocess.run(command, cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^1 passed in ", result.stdout, re.MULTILINE), result.stdout
