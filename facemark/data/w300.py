"""300W (68 points) read exactly as released.

Release layout under ``root``::

    afw/                       <name>.jpg + <name>.pts       (train)
    helen/trainset/            (train)      helen/testset/   (common test)
    lfpw/trainset/             (train)      lfpw/testset/    (common test)
    ibug/                      (challenging test)
    300W/01_Indoor/ 300W/02_Outdoor/                         (private test, optional)

Each image ``name.jpg`` or ``name.png`` has ``name.pts`` beside it: a line ``version: 1``, a line
``n_points: 68``, a line ``{``, 68 lines ``x y`` in **1-based** pixel coordinates, a line ``}``.
facemark subtracts 1 so the landmarks are 0-based. The .pts files carry no face box (box None).

Splits: train = afw + helen/trainset + lfpw/trainset; common = helen/testset + lfpw/testset;
challenging = ibug; full = common + challenging; private = 300W/01_Indoor + 300W/02_Outdoor.
Every record gets ``attributes["subset"]`` ("train", "common", "challenging" or "private") and
``attributes["source"]`` (afw, helen, lfpw, ibug, indoor, outdoor).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facemark.data.records import FaceRecord, LandmarkDataset
from facemark.layouts import get_layout

__all__ = ["W300_SPLITS", "W300_FOLDERS", "read_pts", "load_300w"]

NUM_POINTS = 68
IMAGE_EXTENSIONS = (".jpg", ".png")
# subset -> the release folders it is made of, as (folder relative to root, source name).
W300_FOLDERS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (("afw", "afw"), ("helen/trainset", "helen"), ("lfpw/trainset", "lfpw")),
    "common": (("helen/testset", "helen"), ("lfpw/testset", "lfpw")),
    "challenging": (("ibug", "ibug"),),
    "private": (("300W/01_Indoor", "indoor"), ("300W/02_Outdoor", "outdoor")),
}
# split -> the subsets it is made of.
_SPLIT_SUBSETS = {
    "train": ("train",),
    "common": ("common",),
    "challenging": ("challenging",),
    "full": ("common", "challenging"),
    "private": ("private",),
}
W300_SPLITS = tuple(_SPLIT_SUBSETS)


def read_pts(path: str | Path, num_points: int | None = NUM_POINTS) -> np.ndarray:
    """Read a .pts file and return its landmarks ``(num_points, 2)`` float64, **0-based**.

    The file stores 1-based coordinates (``version: 1`` / ``n_points: N`` / ``{`` / N lines
    ``x y`` / ``}``); 1 is subtracted. ``num_points=None`` takes N from the file (any number of
    points); otherwise N must equal it. Errors name the file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is not part of the text
    except FileNotFoundError:
        raise FileNotFoundError(f".pts file {path} does not exist") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text .pts file ({error})") from None
    # Trailing blank lines are common; everything else must follow the format line by line.
    while lines and not lines[-1].strip():
        lines.pop()

    def line(index: int) -> str:
        return lines[index].strip() if index < len(lines) else "<end of file>"

    key, _, value = line(0).partition(":")
    if key.strip() != "version":
        raise ValueError(f"{path}, line 1: {line(0)!r}; expected 'version: 1'")
    key, _, value = line(1).partition(":")
    if key.strip() != "n_points" or not value.strip().isdigit():
        raise ValueError(f"{path}, line 2: {line(1)!r}; expected 'n_points: {num_points or 'N'}'")
    if num_points is None:
        num_points = int(value)
        if num_points < 1:
            raise ValueError(f"{path}, line 2: n_points is 0; expected at least one point")
    expected_lines = num_points + 4
    if int(value) != num_points:
        raise ValueError(f"{path}, line 2: n_points is {int(value)}; expected {num_points}")
    if line(2) != "{":
        raise ValueError(f"{path}, line 3: {line(2)!r}; expected '{{'")
    landmarks = np.empty((num_points, 2), dtype=np.float64)
    for index in range(num_points):
        line_index = 3 + index
        fields = line(line_index).split()
        if fields == ["}"] or line_index >= len(lines):
            raise ValueError(f"{path}, line {line_index + 1}: only {index} points; expected {num_points} (n_points)")
        if len(fields) != 2:
            raise ValueError(f"{path}, line {line_index + 1}: {line(line_index)!r}; expected two numbers 'x y'")
        try:
            landmarks[index] = float(fields[0]), float(fields[1])
        except ValueError:
            raise ValueError(f"{path}, line {line_index + 1}: {line(line_index)!r}; expected two numbers 'x y'") from None
    if line(3 + num_points) != "}":
        found = line(3 + num_points)
        what = "more points than n_points" if len(found.split()) == 2 else repr(found)
        raise ValueError(f"{path}, line {num_points + 4}: {what}; expected the closing '}}'")
    if len(lines) > expected_lines:
        raise ValueError(f"{path}, line {expected_lines + 1}: {line(expected_lines)!r} after the closing '}}'; expected the end of the file")
    if not np.isfinite(landmarks).all():
        raise ValueError(f"{path}: coordinates must be finite numbers")
    return landmarks - 1.0  # 1-based (MATLAB convention of the release) -> 0-based


def _image_beside(pts_path: Path) -> Path | None:
    for extension in IMAGE_EXTENSIONS:
        candidate = pts_path.with_suffix(extension)
        if candidate.is_file():
            return candidate
    return None


def load_300w(root: str | Path, split: str, check_images: bool = True) -> LandmarkDataset:
    """Read a 300W split ("train", "common", "challenging", "full", "private") under ``root``.

    Records: ``landmarks`` (68, 2) 0-based (1 subtracted from the .pts values), ``box`` None,
    ``attributes`` {"subset", "source"}, identifier the .pts path relative to ``root`` without
    its suffix (e.g. ``"helen/testset/296814969_3"``). With ``check_images`` the image
    ``name.jpg`` or ``name.png`` beside each .pts must exist (without it the path assumes .jpg
    when neither exists).
    """
    if split not in _SPLIT_SUBSETS:
        raise ValueError(f"unknown 300W split {split!r}; expected one of {list(W300_SPLITS)}")
    root = Path(root)
    layout = get_layout("300w68")
    records: list[FaceRecord] = []
    for subset in _SPLIT_SUBSETS[split]:
        for folder_name, source in W300_FOLDERS[subset]:
            folder = root / folder_name
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"300W folder {folder} does not exist (split {split!r} needs "
                    f"{[name for s in _SPLIT_SUBSETS[split] for name, _ in W300_FOLDERS[s]]} under {root})"
                )
            pts_paths = sorted(folder.glob("*.pts"))
            if not pts_paths:
                raise ValueError(f"300W folder {folder} holds no .pts files; expected one per image")
            for pts_path in pts_paths:
                image_path = _image_beside(pts_path)
                if image_path is None:
                    if check_images:
                        raise FileNotFoundError(
                            f"{pts_path}: no image beside it; expected {pts_path.with_suffix('.jpg').name} "
                            f"or {pts_path.with_suffix('.png').name}"
                        )
                    image_path = pts_path.with_suffix(".jpg")
                records.append(
                    FaceRecord(
                        identifier=f"{folder_name}/{pts_path.stem}",
                        landmarks=read_pts(pts_path),
                        layout=layout,
                        box=None,
                        attributes={"subset": subset, "source": source},
                        image_path=image_path,
                    )
                )
    return LandmarkDataset("300w", split, root, layout, records)
