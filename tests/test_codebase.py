"""The codebase as its next engineer meets it: layering, the public API the benchmarks build on,
and what CI's log shows."""
import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import facemark

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(facemark.__file__).parent


def _imports(path: Path):
    """``(line, module, name)`` for every import in ``path`` (name None for ``import module``)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield from ((node.lineno, node.module or "", alias.name) for alias in node.names)


def test_lower_layers_do_not_import_the_command_line():
    # facemark.cli imports the engine and inference; were they to import it back (e.g. for
    # CommandError, which lives in facemark.errors), the layers would form an import cycle.
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py")) if path.parent != PACKAGE or path.name not in ("cli.py", "__main__.py")
        for line, module, name in _imports(path)
        if module == "facemark.cli" or module.startswith("facemark.cli.") or (module == "facemark" and name == "cli")
    ]
    assert offenders == []


def test_benchmarks_use_public_helpers_only():
    # The benchmarks show how to use facemark: they import nothing private (a leading underscore).
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {module}.{name}"
        for path in sorted((ROOT / "benchmarks").glob("*.py"))
        for line, module, name in _imports(path)
        if module.startswith("facemark") and (any(part.startswith("_") for part in module.split("."))
                                              or (name or "").startswith("_"))
    ]
    assert offenders == []


def test_make_test_prints_the_summary_line():
    # CI runs `make test`: its log must say how many tests ran ("N passed"). pytest's -q from
    # pyproject's addopts plus another -q on the command line (-qq) drops that line.
    makefile = (ROOT / "Makefile").read_text().splitlines()
    recipe = makefile[makefile.index(next(line for line in makefile if line.startswith("test:"))) + 1].strip()
    command = shlex.split(recipe.replace("$(BIN)/python", shlex.quote(sys.executable)))
    assert command[-1] == "tests"
    command[-1] = "tests/test_cli.py::test_help_lists_the_commands"
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^1 passed in ", result.stdout, re.MULTILINE), result.stdout


# Documentation of the product, not a diary: measurements are dated and come with their command,
# and no text says which work session measured what. (docs/training.md, sdfl.md, slpt.md and the
# configs' headers are checked by their owners' tests once rewritten.)
PRODUCT_DOCS = ["README.md", *(path.relative_to(ROOT).as_posix() for folder, pattern in
                                (("docs", "*.md"), ("configs", "*.yaml"), ("benchmarks", "*.py"))
                                for path in sorted((ROOT / folder).glob(pattern)))]
DIARY = re.compile(r"\bsessions?[- ]\d|\bsession \d|\bwork periods?\b|\bsitting\b", re.IGNORECASE)


def test_product_docs_are_not_a_diary():
    found = [f"{name}:{number}: {line.strip()}"
             for name in PRODUCT_DOCS
             for number, line in enumerate((ROOT / name).read_text().splitlines(), 1) if DIARY.search(line)]
    assert found == []


def test_experiments_page_is_dated():
    # One page keeps the past experiments that still teach something, each section dated.
    headings = [line for line in (ROOT / "docs/experiments.md").read_text().splitlines() if line.startswith("## ")]
    assert headings and all(re.search(r"\(\d{4}-\d{2}-\d{2}", heading) for heading in headings), headings
