"""Paper-exact face-alignment metrics: NME, failure rate, AUC, CED curves, and a results object.

Conventions (``docs/metrics.md``; the community's evaluation code, summarised in
``shared/facts/evaluation.md``):

* **NME** of one image = mean over the K landmarks of the Euclidean error, divided by a
  reference distance ``d`` of the **ground truth** (SLPT eq. 9). Both are measured in the
  original image frame. Returned as a fraction; the papers print it x100 (%).
  ``d`` is the inter-ocular distance (outer eye corners), the inter-pupil distance (pupil
  centres; the eye centroids for 300W's 68 points) or ``sqrt(w * h)`` of a ground-truth box.
* **FR@theta**: fraction of images whose NME is *strictly greater* than theta.
* **AUC@theta**: area under the cumulative error distribution (CED(x) = fraction of images with
  NME <= x) sampled at x = 0, 1e-4, ..., theta, integrated with Simpson's rule and divided by
  theta.

Every number printed by this module carries its normalisation and threshold in its label
(``NME_io``, ``FR_io@0.10``, ``AUC_ip@0.08``): 300W and COFW tables mix normalisations.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from scipy.integrate import simpson

from facemark.layouts import Layout, get_layout

if TYPE_CHECKING:  # only for type hints; the records module does not import this one
    from facemark.data.records import LandmarkDataset

__all__ = [
    "NORMALISATIONS",
    "nme",
    "failure_rate",
    "auc",
    "ced_curve",
    "plot_ced",
    "subset_masks",
    "WFLW_SUBSETS",
    "W300_SUBSETS",
    "EvaluationResults",
    "compare_table",
    "compare_markdown",
]

# Normalisation name -> the short tag used in every printed label.
NORMALISATIONS = {"inter_ocular": "io", "inter_pupil": "ip", "bbox": "bbox"}
_NORM_WORDS = {"inter_ocular": "inter-ocular", "inter_pupil": "inter-pupil", "bbox": "sqrt(box w*h)"}


# ==============================================================================================
# Per-image NME
# ==============================================================================================
def _landmark_batch(array, name: str) -> np.ndarray:
    """``(n, K, 2)`` float64 from an ``(n, K, 2)`` or a single ``(K, 2)`` array."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (n, K, 2) or (K, 2), got {array.shape}")
    return array


def _first_bad(mask: np.ndarray, limit: int = 5) -> str:
    """``"image 3"`` / ``"images 3, 7, 9 (and 4 more)"`` for the True entries of ``mask``."""
    bad = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in bad[:limit])
    more = f" (and {len(bad) - limit} more)" if len(bad) > limit else ""
    return f"image{'s' if len(bad) > 1 else ''} {shown}{more}"


def _box_sizes(boxes, num_images: int) -> np.ndarray:
    """``sqrt(w * h)`` of ``(n, 4)`` boxes ``x_min, y_min, x_max, y_max``."""
    if boxes is None:
        raise ValueError('norm="bbox" needs boxes: an (n, 4) array of x_min, y_min, x_max, y_max')
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.shape != (num_images, 4):
        raise ValueError(f"boxes must have shape ({num_images}, 4) (x_min, y_min, x_max, y_max), got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"boxes are not finite for {_first_bad(~np.isfinite(boxes).all(axis=1))}")
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    degenerate = (width <= 0) | (height <= 0)
    if degenerate.any():
        raise ValueError(f"boxes need x_max > x_min and y_max > y_min; not so for {_first_bad(degenerate)}")
    return np.sqrt(width * height)


def nme(pred, gt, layout: Layout | str, norm: str = "inter_ocular", boxes=None) -> np.ndarray:
    """Per-image normalised mean error, as a fraction (multiply by 100 for the papers' %).

    Args:
        pred: predicted landmarks ``(n, K, 2)`` (or one ``(K, 2)`` face), original-image pixels.
        gt: ground-truth landmarks, same shape and frame.
        layout: a :class:`~facemark.layouts.Layout` or a name for :func:`~facemark.layouts.get_layout`.
        norm: ``"inter_ocular"`` (outer eye corners), ``"inter_pupil"`` (pupil centres; for
            300W/COFW68 the centroids of the six points of each eye) or ``"bbox"``
            (``sqrt(w * h)`` of ``boxes``).
        boxes: ``(n, 4)`` ground-truth boxes ``x_min, y_min, x_max, y_max``; only for ``"bbox"``.

    Returns:
        ``(n,)`` float64: ``mean_k ||pred_k - gt_k|| / d`` with ``d`` measured on the ground
        truth (SLPT eq. 9, without the x100).

    Raises:
        ValueError: mismatched shapes, a point count other than the layout's, non-finite
            coordinates, or a zero / non-finite normaliser; the message names the image index.
    """
    layout = get_layout(layout)
    if norm not in NORMALISATIONS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMALISATIONS)}")
    if boxes is not None and norm != "bbox":
        raise ValueError(f'boxes are only used with norm="bbox", not with norm={norm!r}')
    pred = _landmark_batch(pred, "pred")
    gt = _landmark_batch(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred has shape {pred.shape} but gt has shape {gt.shape}; they must match")
    if pred.shape[1] != layout.num_points:
        raise ValueError(f"layout {layout.name!r} has {layout.num_points} points, landmarks have {pred.shape[1]}")
    for name, array in (("pred", pred), ("gt", gt)):
        finite = np.isfinite(array).all(axis=(1, 2))
        if not finite.all():
            raise ValueError(f"{name} has NaN or infinite coordinates in {_first_bad(~finite)}")

    if norm == "inter_ocular":
        normaliser = layout.inter_ocular_distance(gt)
    elif norm == "inter_pupil":
        normaliser = layout.inter_pupil_distance(gt)
    else:
        normaliser = _box_sizes(boxes, len(gt))
    bad = ~(np.isfinite(normaliser) & (normaliser > 0))
    if bad.any():
        raise ValueError(
            f"the {_NORM_WORDS[norm]} normaliser of the ground truth is zero or not finite for "
            f"{_first_bad(bad)} (layout {layout.name!r})"
        )
    point_errors = np.linalg.norm(pred - gt, axis=-1)  # (n, K)
    return point_errors.mean(axis=1) / normaliser


# ==============================================================================================
# FR, CED, AUC
# ==============================================================================================
def _check_nmes(nmes) -> np.ndarray:
    nmes = np.asarray(nmes, dtype=np.float64)
    if nmes.ndim != 1 or nmes.size == 0:
        raise ValueError(f"nmes must be a non-empty 1-D array of per-image NMEs, got shape {nmes.shape}")
    bad = ~np.isfinite(nmes) | (nmes < 0)
    if bad.any():
        raise ValueError(f"nmes must be finite and >= 0; not so for {_first_bad(bad)}")
    return nmes


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive number, got {threshold}")
    return threshold


def failure_rate(nmes, threshold: float = 0.10) -> float:
    """Fraction of images whose NME is strictly greater than ``threshold`` (``FR@threshold``)."""
    nmes = _check_nmes(nmes)
    threshold = _check_threshold(threshold)
    return float(np.mean(nmes > threshold))


def ced_curve(nmes, threshold: float = 0.10, step: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative error distribution sampled at ``x = 0, step, 2 step, ..., threshold``.

    Returns ``(x, fraction)`` with ``fraction[i]`` = share of images with ``NME <= x[i]``.
    The grid is built with ``linspace`` (not ``arange``, whose float steps can add or drop the
    last point); ``threshold`` must be a whole multiple of ``step``.
    """
    nmes = _check_nmes(nmes)
    threshold = _check_threshold(threshold)
    step = float(step)
    if not (np.isfinite(step) and 0 < step <= threshold):
        raise ValueError(f"step must be in (0, threshold={threshold}], got {step}")
    num_steps = round(threshold / step)
    if abs(threshold / step - num_steps) > 1e-6:
        raise ValueError(f"threshold {threshold} is not a whole multiple of step {step}")
    x = np.linspace(0.0, threshold, num_steps + 1)
    # searchsorted(side="right") counts the sorted NMEs that are <= x.
    fraction = np.searchsorted(np.sort(nmes), x, side="right") / len(nmes)
    return x, fraction


def auc(nmes, threshold: float = 0.10, step: float = 1e-4) -> float:
    """Area under the CED from 0 to ``threshold``, divided by ``threshold`` (``AUC@threshold``).

    Simpson's rule on the :func:`ced_curve` samples, as the community code does; 1 when every
    NME is 0, 0 when every NME exceeds ``threshold``. (With an even number of samples SciPy
    closes the last interval with Cartwright's correction; the default grid has an odd number.)
    """
    x, fraction = ced_curve(nmes, threshold, step)
    return float(simpson(fraction, x=x) / threshold)


def _threshold_label(threshold: float) -> str:
    """``0.1 -> "0.10"``, ``0.08 -> "0.08"``, ``0.075 -> "0.075"``: at least two decimals."""
    text = f"{threshold:.2f}"
    return text if float(text) == threshold else f"{threshold:g}"


def plot_ced(
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    threshold: float = 0.10,
    title: str = "Cumulative error distribution",
    *,
    norm: str = "inter_ocular",
    step: float = 1e-4,
) -> Path:
    """Write a PNG of the CED curves of several models / subsets.

    Args:
        curves: label -> per-image NMEs (fractions), all under the normalisation ``norm``.
        path: the PNG file to write (its folder must exist).
        threshold: the x range (0 to ``threshold``) and the AUC threshold in the legend.
        title: the plot title.
        norm: the normalisation the NMEs were computed with; only used in the labels.
        step: CED sampling step (as :func:`auc`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    # Figure + Agg canvas directly: no pyplot, so no global backend switch in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if norm not in NORMALISATIONS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {list(NORMALISATIONS)}")
    if not curves:
        raise ValueError("curves is empty: give at least one label -> per-image NMEs")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} for the CED plot does not exist")
    tag, thr = NORMALISATIONS[norm], _threshold_label(threshold)

    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, nmes in curves.items():
        try:
            x, fraction = ced_curve(nmes, threshold, step)
        except ValueError as error:
            raise ValueError(f"curve {label!r}: {error}") from None
        area = float(simpson(fraction, x=x) / threshold)
        axes.plot(100.0 * x, fraction, linewidth=1.8, label=f"{label} (AUC_{tag}@{thr} = {area:.4f})")
    axes.set_xlim(0.0, 100.0 * threshold)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel(f"NME_{tag} (%), {_NORM_WORDS[norm]} normalisation")
    axes.set_ylabel("fraction of images with NME <= x")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    # "best": weak models' curves hug the bottom, strong ones the top left; a fixed corner hides one.
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


# ==============================================================================================
# Subsets of the benchmarks
# ==============================================================================================
# WFLW's test attribute subsets, in the order of the annotation columns and the papers' tables.
WFLW_SUBSETS = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
W300_SUBSETS = ("common", "challenging")
# Values the 300W reader puts in record.attributes["subset"] (train and private are no test subsets).
W300_SUBSET_LABELS = ("train", "common", "challenging", "private")


def subset_masks(dataset: "LandmarkDataset") -> dict[str, np.ndarray]:
    """The benchmark's subsets of ``dataset`` as boolean masks over its records.

    * WFLW (any split except the single-subset splits ``"test/<subset>"``): the six attribute
      subsets, from ``record.attributes[name]`` (1 = in the subset) for the names in
      :data:`WFLW_SUBSETS`.
    * 300W: ``"common"`` and ``"challenging"`` from ``record.attributes["subset"]`` (one of
      :data:`W300_SUBSET_LABELS`, set by the reader), and ``"full"`` = both, when both are
      present. A ``"common"`` or ``"challenging"`` split without that attribute is that subset.
    * COFW, COFW68 and other datasets: no subsets (the table reports every image).

    Empty subsets are kept for WFLW (their table cells print ``-``) and dropped for 300W.
    """
    name = dataset.name.lower()
    records = list(dataset)
    if name == "wflw":
        if dataset.split.startswith("test/"):
            return {}
        masks = {}
        for subset in WFLW_SUBSETS:
            flags = []
            for record in records:
                if subset not in record.attributes:
                    raise ValueError(
                        f"WFLW record {record.identifier}: attribute {subset!r} missing; expected the "
                        f"attributes {list(WFLW_SUBSETS)}, found {sorted(record.attributes)}"
                    )
                flags.append(int(record.attributes[subset]) == 1)
            masks[subset] = np.array(flags, dtype=bool)
        return masks
    if name == "300w":
        labels = [record.attributes.get("subset") for record in records]
        if all(label is None for label in labels):
            if dataset.split in W300_SUBSETS:
                return {dataset.split: np.ones(len(records), dtype=bool)}
            return {}
        for record, label in zip(records, labels):
            if label not in W300_SUBSET_LABELS:
                raise ValueError(
                    f"300W record {record.identifier}: attributes['subset'] is {label!r}; "
                    f"expected one of {list(W300_SUBSET_LABELS)}"
                )
        labels_array = np.array(labels)
        masks = {subset: labels_array == subset for subset in W300_SUBSETS if (labels_array == subset).any()}
        if len(masks) == 2:
            masks["full"] = masks["common"] | masks["challenging"]
        return masks
    return {}


# ==============================================================================================
# Table layouts of the papers (rows = metrics, columns = subsets)
# ==============================================================================================
@dataclass(frozen=True)
class _Row:
    """One metric row: ``kind`` is "NME", "FR" or "AUC"; ``threshold`` is None for NME."""

    kind: str
    norm: str
    threshold: float | None = None

    @property
    def key(self) -> str:
        """The metric's key in :meth:`EvaluationResults.summary`, e.g. ``FR_io@0.10``."""
        tag = NORMALISATIONS[self.norm]
        if self.threshold is None:
            return f"{self.kind}_{tag}"
        return f"{self.kind}_{tag}@{_threshold_label(self.threshold)}"

    @property
    def label(self) -> str:
        """The printed row label, with the unit: ``NME_io (%)``, ``FR_io@0.10 (%)``, ``AUC_io@0.10``."""
        return self.key if self.kind == "AUC" else f"{self.key} (%)"


_IO, _IP = "inter_ocular", "inter_pupil"
# SDFL Table II / SLPT Table 1 (WFLW), SLPT Table 2 / SDFL Table IV (300W), SLPT Table 3 (COFW),
# SLPT Table 4 / SDFL Table III (COFW68). The 300W rows add IP, FR and AUC, which papers mix.
_TABLE_ROWS = {
    "wflw": (_Row("NME", _IO), _Row("FR", _IO, 0.10), _Row("AUC", _IO, 0.10)),
    "300w": (
        _Row("NME", _IO), _Row("NME", _IP), _Row("FR", _IO, 0.08), _Row("FR", _IO, 0.10),
        _Row("AUC", _IO, 0.08), _Row("AUC", _IO, 0.10),
    ),
    "cofw": (_Row("NME", _IO), _Row("FR", _IO, 0.10), _Row("NME", _IP), _Row("FR", _IP, 0.10)),
    "cofw68": (_Row("NME", _IO), _Row("FR", _IO, 0.10)),
}
_DEFAULT_ROWS = (_Row("NME", _IO), _Row("NME", _IP), _Row("FR", _IO, 0.10), _Row("AUC", _IO, 0.10))
# (column header, subset name); None = every image of the split.
_TABLE_COLUMNS = {
    "wflw": (("Test", None), ("Pose", "pose"), ("Expression", "expression"), ("Illumination", "illumination"),
             ("Make-up", "makeup"), ("Occlusion", "occlusion"), ("Blur", "blur")),
    "300w": (("Common", "common"), ("Challenging", "challenging"), ("Fullset", "full")),
}


def _format_value(row: _Row, value: float | None, nme_decimals: int) -> str:
    if value is None:
        return "-"
    if row.kind == "AUC":
        return f"{value:.4f}"
    return f"{100.0 * value:.{nme_decimals if row.kind == 'NME' else 2}f}"


def _is_number(text: str) -> bool:
    if text == "-":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numeric_columns(rows: list[list[str]], num_columns: int) -> list[bool]:
    """Columns whose every cell is a number (or "-"): those are right-aligned."""
    return [bool(rows) and all(_is_number(r[i]) for r in rows) for i in range(num_columns)]


def _render_text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header] + rows) for i in range(len(header))]
    numeric = _numeric_columns(rows, len(header))

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def _render_markdown(header: list[str], rows: list[list[str]]) -> str:
    align = ["---:" if right else "---" for right in _numeric_columns(rows, len(header))]
    lines = [header, align] + rows
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


# ==============================================================================================
# The results object
# ==============================================================================================
@dataclass
class EvaluationResults:
    """Per-image NMEs of one model on one dataset split, with what is needed to trust them.

    Attributes:
        dataset: the benchmark (``"wflw"``, ``"300w"``, ``"cofw"``, ``"cofw68"`` or an own name).
        split: the split evaluated (``"test"``, ``"full"``, ...).
        layout: the landmark layout's name.
        model: the model's name (checkpoint, method and backbone, as you want it printed).
        box_source: which box the face crop came from and its enlargement, e.g.
            ``"gt_landmarks x1.2"``, ``"dataset x1.25"``, ``"detector x1.15"``; it changes NME
            (``docs/metrics.md``), so it is required.
        identifiers: one per image, in the order of the NME arrays.
        nmes: normalisation (``"inter_ocular"``, ``"inter_pupil"``, ``"bbox"``) -> ``(n,)`` NMEs.
        subsets: subset name -> ``(n,)`` bool mask.
        extra: free metadata (command line, checkpoint hash, date, ...), stored in the JSON.
        normalisation: the layout's own normaliser (a key of ``nmes``): the one whose FR and
            AUC own datasets' tables report and whose CED is plotted.
    """

    dataset: str
    split: str
    layout: str
    model: str
    box_source: str
    identifiers: list[str]
    nmes: dict[str, np.ndarray]
    subsets: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    normalisation: str = "inter_ocular"

    def __post_init__(self) -> None:
        for key in ("dataset", "split", "layout", "model", "box_source"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"EvaluationResults: {key!r} must be a non-empty string, got {value!r}")
        self.dataset = self.dataset.lower()
        self.identifiers = [str(i) for i in self.identifiers]
        num_images = len(self.identifiers)
        if num_images == 0:
            raise ValueError("EvaluationResults: no images")
        if len(set(self.identifiers)) != num_images:
            raise ValueError("EvaluationResults: identifiers must be unique")
        if self.normalisation not in self.nmes:
            raise ValueError(f"EvaluationResults: nmes must hold the {self.normalisation!r} NMEs (the normalisation "
                             f"of the results), found {list(self.nmes)}")
        checked = {}
        for norm, values in self.nmes.items():
            if norm not in NORMALISATIONS:
                raise ValueError(f"EvaluationResults: unknown normalisation {norm!r}; expected {list(NORMALISATIONS)}")
            values = _check_nmes(values)
            if len(values) != num_images:
                raise ValueError(f"EvaluationResults: nmes[{norm!r}] has {len(values)} values for {num_images} images")
            checked[norm] = values
        self.nmes = checked
        masks = {}
        for subset, mask in self.subsets.items():
            mask = np.asarray(mask)
            if mask.dtype != bool or mask.shape != (num_images,):
                raise ValueError(
                    f"EvaluationResults: subset {subset!r} must be a ({num_images},) bool mask, got {mask.dtype} {mask.shape}"
                )
            if subset == "all":
                raise ValueError('EvaluationResults: "all" is reserved for every image; rename that subset')
            masks[str(subset)] = mask
        self.subsets = masks

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_landmarks(
        cls,
        pred,
        gt,
        layout: Layout | str,
        *,
        dataset: str,
        split: str,
        model: str,
        box_source: str,
        boxes=None,
        identifiers: Sequence[str] | None = None,
        subsets: Mapping[str, np.ndarray] | None = None,
        extra: Mapping | None = None,
    ) -> "EvaluationResults":
        """Results from predicted and ground-truth landmarks ``(n, K, 2)`` in original-image pixels.

        NMEs are computed under the inter-ocular and inter-pupil normalisations the layout
        defines, and under ``"bbox"`` when ``boxes`` (ground-truth ``(n, 4)`` x_min, y_min, x_max,
        y_max) are given. A layout normalised by ``"bbox"`` needs the boxes.
        """
        layout = get_layout(layout)
        if layout.normalisation == "bbox" and boxes is None:
            raise ValueError(f"layout {layout.name!r} is normalised by the face box (normalisation: bbox) but the "
                             "faces have no boxes; give every face a box or use another normalisation")
        nmes = {norm: nme(pred, gt, layout, norm) for norm in layout.normalisers}
        if boxes is not None:
            nmes["bbox"] = nme(pred, gt, layout, "bbox", boxes=boxes)
        num_images = len(nmes[layout.normalisation])
        if identifiers is None:
            identifiers = [str(i) for i in range(num_images)]
        if len(identifiers) != num_images:
            raise ValueError(f"{len(identifiers)} identifiers for {num_images} images")
        return cls(
            dataset=dataset, split=split, layout=layout.name, model=model, box_source=box_source,
            identifiers=list(identifiers), nmes=nmes, subsets=dict(subsets or {}), extra=dict(extra or {}),
            normalisation=layout.normalisation,
        )

    @classmethod
    def from_predictions(
        cls,
        predictions,
        dataset: "LandmarkDataset",
        model_name: str,
        box_source: str,
        subsets: Mapping[str, np.ndarray] | None = None,
        extra: Mapping | None = None,
    ) -> "EvaluationResults":
        """Results of ``predictions`` ``(n, K, 2)`` for the records of ``dataset``, in order.

        ``predictions`` must already be mapped back to the original images (the inverse crop
        transform). The ground truth, identifiers and layout come from the records; ``"bbox"``
        NMEs use the records' dataset rectangles when every record has one. ``subsets``
        defaults to :func:`subset_masks` of the dataset.
        """
        predictions = _landmark_batch(predictions, "predictions")
        if len(predictions) != len(dataset):
            raise ValueError(f"{len(predictions)} predictions for the {len(dataset)} records of {dataset!r}")
        boxes = None
        if len(dataset) and all(record.box is not None for record in dataset):
            boxes = np.array([record.box for record in dataset], dtype=np.float64)
        return cls.from_landmarks(
            predictions,
            dataset.landmarks(),
            dataset.layout,
            dataset=dataset.name,
            split=dataset.split,
            model=model_name,
            box_source=box_source,
            boxes=boxes,
            identifiers=[record.identifier for record in dataset],
            subsets=subset_masks(dataset) if subsets is None else subsets,
            extra=extra,
        )

    # -- numbers ----------------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        return len(self.identifiers)

    def per_image(self, norm: str | None = None, subset: str | None = None) -> np.ndarray:
        """The per-image NMEs under ``norm`` (default: the results' normalisation), of every image or
        of one subset (e.g. for :func:`plot_ced`)."""
        norm = self.normalisation if norm is None else norm
        if norm not in self.nmes:
            raise KeyError(f"no {norm!r} NMEs in these results; available: {list(self.nmes)}")
        if subset is None:
            return self.nmes[norm]
        if subset not in self.subsets:
            raise KeyError(f"no subset {subset!r} in these results; available: {list(self.subsets)}")
        return self.nmes[norm][self.subsets[subset]]

    def _metric(self, row: _Row, subset: str | None) -> float | None:
        values = self.per_image(row.norm, subset)
        if values.size == 0:
            return None
        if row.kind == "NME":
            return float(values.mean())
        if row.kind == "FR":
            return failure_rate(values, row.threshold)
        return auc(values, row.threshold)

    def summary(self, thresholds: Sequence[float] = (0.08, 0.10)) -> dict[str, dict]:
        """Every metric, overall (key ``"all"``) and per subset, as FRACTIONS (not %).

        ``{"all": {"n": 2500, "NME_io": 0.0414, "FR_io@0.08": ..., "FR_io@0.10": ...,
        "AUC_io@0.08": ..., "AUC_io@0.10": ..., "NME_ip": ..., ...}, "pose": {...}, ...}``;
        a subset without images has only ``"n": 0``.
        """
        rows = []
        for norm in self.nmes:
            rows.append(_Row("NME", norm))
            rows += [_Row("FR", norm, t) for t in thresholds]
            rows += [_Row("AUC", norm, t) for t in thresholds]
        result = {}
        for subset in [None] + list(self.subsets):
            count = self.num_images if subset is None else int(self.subsets[subset].sum())
            entry: dict = {"n": count}
            if count:
                entry.update({row.key: self._metric(row, subset) for row in rows})
            result["all" if subset is None else subset] = entry
        return result

    # -- tables -----------------------------------------------------------------------------------
    def _layout_of_table(self) -> tuple[list[_Row], list[tuple[str, str | None]]]:
        """The papers' rows and columns for this dataset, limited to what these results hold."""
        rows = [row for row in _TABLE_ROWS.get(self.dataset, self._own_rows()) if row.norm in self.nmes]
        everything = "Test" if self.split == "test" else self.split  # header of the all-images column
        columns = []
        for header, subset in _TABLE_COLUMNS.get(self.dataset, ()):
            if subset is None:
                columns.append((everything, None))
            elif subset in self.subsets:
                columns.append((header, subset))
        if not columns:
            columns = [(everything, None)]
        return rows, columns

    def _own_rows(self) -> tuple[_Row, ...]:
        """Rows of a dataset without a paper table: the NME under every normalisation held (the
        results' own first), then FR and AUC at 0.10 under the results' normalisation."""
        if self.normalisation == "inter_ocular" and set(self.nmes) <= {_IO, _IP}:
            return _DEFAULT_ROWS
        norms = [self.normalisation] + [norm for norm in NORMALISATIONS if norm in self.nmes and norm != self.normalisation]
        return tuple(_Row("NME", norm) for norm in norms) + (_Row("FR", self.normalisation, 0.10),
                                                              _Row("AUC", self.normalisation, 0.10))

    def _title(self) -> str:
        stated = "" if self.dataset in _TABLE_ROWS else f" | normalisation: {_NORM_WORDS[self.normalisation]}"
        return (
            f"{self.dataset} {self.split} ({self.num_images} images, layout {self.layout}) | "
            f"model: {self.model} | boxes: {self.box_source}{stated}"
        )

    def _grid(self, nme_decimals: int) -> tuple[list[str], list[list[str]]]:
        rows, columns = self._layout_of_table()
        header = ["Metric"] + [header for header, _ in columns]
        body = [
            [row.label] + [_format_value(row, self._metric(row, subset), nme_decimals) for _, subset in columns]
            for row in rows
        ]
        return header, body

    def table(self, nme_decimals: int = 2) -> str:
        """Plain-text table in the papers' layout: NME and FR in %, AUC as a fraction."""
        header, body = self._grid(nme_decimals)
        return self._title() + "\n" + _render_text(header, body)

    def markdown(self, nme_decimals: int = 2) -> str:
        """:meth:`table` as a Markdown table (title line in italics above it)."""
        header, body = self._grid(nme_decimals)
        return f"*{self._title()}*\n\n" + _render_markdown(header, body)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:  # short: the per-image arrays would flood a console
        return (
            f"EvaluationResults(dataset={self.dataset!r}, split={self.split!r}, layout={self.layout!r}, "
            f"model={self.model!r}, box_source={self.box_source!r}, n={self.num_images}, "
            f"norms={list(self.nmes)}, subsets={list(self.subsets)})"
        )

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready form: metadata, identifiers, per-image NMEs, subsets (as indices), summary.

        The summary is for readers of the file; :meth:`from_dict` recomputes it from the NMEs.
        """
        return {
            "format": "facemark.evaluation_results",
            "version": 1,
            "dataset": self.dataset,
            "split": self.split,
            "layout": self.layout,
            "model": self.model,
            "box_source": self.box_source,
            "normalisation": self.normalisation,
            "num_images": self.num_images,
            "extra": self.extra,
            "summary": self.summary(),
            "identifiers": self.identifiers,
            "nme": {norm: values.tolist() for norm, values in self.nmes.items()},
            "subsets": {subset: np.flatnonzero(mask).tolist() for subset, mask in self.subsets.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "results") -> "EvaluationResults":
        """Inverse of :meth:`to_dict`; errors name ``source`` and the offending key."""
        if not isinstance(data, Mapping) or data.get("format") != "facemark.evaluation_results":
            raise ValueError(f"{source}: not a facemark evaluation results file (key 'format' missing or wrong)")
        if data.get("version") != 1:
            raise ValueError(f"{source}: unsupported results version {data.get('version')!r}; expected 1")
        required = ("dataset", "split", "layout", "model", "box_source", "identifiers", "nme", "subsets")
        missing = [key for key in required if key not in data]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}")
        num_images = len(data["identifiers"])
        subsets = {}
        for subset, indices in data["subsets"].items():
            indices = np.asarray(indices, dtype=np.int64)
            if indices.size and (indices.min() < 0 or indices.max() >= num_images):
                raise ValueError(f"{source}: subsets[{subset!r}] has indices outside 0..{num_images - 1}")
            mask = np.zeros(num_images, dtype=bool)
            mask[indices] = True
            subsets[subset] = mask
        try:
            return cls(
                dataset=data["dataset"], split=data["split"], layout=data["layout"], model=data["model"],
                box_source=data["box_source"], identifiers=list(data["identifiers"]),
                nmes={norm: np.asarray(values, dtype=np.float64) for norm, values in data["nme"].items()},
                subsets=subsets, extra=dict(data.get("extra") or {}),
                normalisation=str(data.get("normalisation") or "inter_ocular"),
            )
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (floats written exactly: re-reading gives the same numbers)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> "EvaluationResults":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"results file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(data, source=str(path))


# ==============================================================================================
# Several models in one table
# ==============================================================================================
def _comparison_grid(results: Mapping[str, EvaluationResults], nme_decimals: int):
    if not results:
        raise ValueError("no results to compare")
    names = list(results)
    first = results[names[0]]
    for name in names[1:]:
        other = results[name]
        if (other.dataset, other.split, other.layout) != (first.dataset, first.split, first.layout):
            raise ValueError(
                f"results {name!r} are for {other.dataset} {other.split} ({other.layout}) but {names[0]!r} "
                f"for {first.dataset} {first.split} ({first.layout}); compare one benchmark at a time"
            )
        if other.identifiers != first.identifiers:
            raise ValueError(f"results {name!r} and {names[0]!r} cover different images; compare the same images")
    # Rows and columns that every result can fill (e.g. bbox NMEs only when all have them).
    rows, columns = first._layout_of_table()
    for other in results.values():
        other_rows, other_columns = other._layout_of_table()
        rows = [row for row in rows if row in other_rows]
        columns = [column for column in columns if column in other_columns]
    header = ["Metric", "Model"] + [header for header, _ in columns]
    body = [
        [row.label, name] + [_format_value(row, results[name]._metric(row, subset), nme_decimals) for _, subset in columns]
        for row in rows
        for name in names
    ]
    title = f"{first.dataset} {first.split} ({first.num_images} images, layout {first.layout})"
    if first.dataset not in _TABLE_ROWS:
        title += f", normalisation: {_NORM_WORDS[first.normalisation]}"
    boxes = "; ".join(f"{name}: {results[name].box_source}" for name in names)
    return title, f"boxes: {boxes}", header, body


def compare_table(results: Mapping[str, EvaluationResults], nme_decimals: int = 2) -> str:
    """Several models on the same images in one plain-text table (SDFL Table II layout:
    one block of rows per metric, one row per model, one column per subset)."""
    title, boxes, header, body = _comparison_grid(results, nme_decimals)
    return f"{title}\n{_render_text(header, body)}\n{boxes}"


def compare_markdown(results: Mapping[str, EvaluationResults], nme_decimals: int = 2) -> str:
    """:func:`compare_table` as Markdown."""
    title, boxes, header, body = _comparison_grid(results, nme_decimals)
    return f"*{title}*\n\n{_render_markdown(header, body)}\n\n{boxes}"
