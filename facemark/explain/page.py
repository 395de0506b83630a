"""Writing the figures (PNG), the tensors behind them (``.npy``) and one markdown page."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["Page", "pyplot"]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams["figure.constrained_layout.use"] = True  # titles and colour bars never overlap
    return plt


class Page:
    """A folder of figures and arrays, and ``explain.md`` showing them in order."""

    def __init__(self, out_dir: str | Path, title: str):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.lines = [f"# {title}", ""]
        self.files: list[Path] = []

    def text(self, *lines: str) -> None:
        self.lines += [*lines, ""]

    def array(self, name: str, value) -> str:
        """Save ``value`` as ``<name>.npy``; returns the file name."""
        path = self.out_dir / f"{name}.npy"
        np.save(path, np.asarray(value))
        self.files.append(path)
        return path.name

    def figure(self, figure, name: str, heading: str, caption: str, arrays: dict | None = None) -> Path:
        """Save a matplotlib figure as ``<name>.png`` (and ``arrays`` as ``.npy`` beside it) and show it."""
        plt = pyplot()
        path = self.out_dir / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        self.files.append(path)
        saved = [self.array(key, value) for key, value in (arrays or {}).items()]
        self.lines += [f"## {heading}", "", caption, "", f"![{heading}]({path.name})", ""]
        if saved:
            self.lines += ["Tensors: " + ", ".join(f"`{file}`" for file in saved), ""]
        return path

    def write(self) -> Path:
        path = self.out_dir / "explain.md"
        path.write_text("\n".join(self.lines))
        self.files.append(path)
        return path
