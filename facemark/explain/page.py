"""Writing the figures (PNG), the tensors behind them (``.npy``) and one markdown page; drawing helpers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["Page", "pyplot", "subplots", "show_face", "draw_matrix"]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def subplots(*args, **kwargs):
    """``pyplot().subplots`` with the constrained layout, so titles and colour bars never overlap."""
    return pyplot().subplots(*args, layout="constrained", **kwargs)


def show_face(ax, crop: np.ndarray, title: str) -> None:
    """A face crop without ticks, the view fixed to the crop."""
    ax.imshow(crop)
    ax.autoscale(False)  # points outside the crop (an untrained model's) must not widen the view
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_matrix(ax, figure, matrix: np.ndarray, title: str, cmap: str = "viridis", vmin=None, vmax=None,
                label: str = "") -> None:
    """An (N, N) matrix with landmark-index axes and a labelled colour bar."""
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("landmark (key)" if "attention" in label else "landmark", fontsize=8)
    ax.set_ylabel("landmark (query)" if "attention" in label else "landmark", fontsize=8)
    ax.tick_params(labelsize=7)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label(label, fontsize=8)


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
