"""``facemark.Predictor``: landmarks on your own images, in their pixel coordinates.

The pipeline, for every face::

    image --(detector or your box)--> box --(calibration)--> the model's box source
          --(crop convention: square of side enlarge x max(w, h), S x S)--> crop
          --(model)--> landmarks in normalised crop coordinates
          --(inverse of the same affine)--> landmarks in the image's pixels

The crop and its inverse are :mod:`facemark.data.transforms`'s (the ones training and evaluation
use), and the crop convention comes from the weights file, so a model sees at inference the same
kind of crop it was trained on. ``weights`` may be:

- a facemark checkpoint (``facemark train``'s ``.pt``: model, layout, crop convention inside);
- an authors' released SLPT checkpoint (a plain state dict; recognised by its keys; official
  crop convention: tight landmark box x1.2, 256 x 256; layout from the number of points);
- a released HRNet facial-landmark checkpoint (HR18-WFLW.pth, HR18-300W.pth, HR18-COFW.pth: the
  heatmap baseline; recognised by its keys; its crop: tight landmark box x1.25, 256 x 256; layout
  from the number of heatmaps: 98, 68 or 29);
- an exported ``.onnx`` or TorchScript file (``facemark export``: layout and crop inside);
- an ``nn.Module`` following the facemark model contract, with ``layout=`` and ``crop_convention=``.
"""
from __future__ import annotations

import copy
import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from facemark.data.transforms import (
    CropConvention,
    crop_matrix,
    crop_to_image,
    crop_to_tensor,
    denormalise_landmarks,
    hrnet_crop_convention,
    landmark_box,
    normalise_crops,
    slpt_crop_convention,
    square_box,
    warp_image,
)
from facemark.inference.detectors import DETECTOR_NAMES, IDENTITY_CALIBRATION, BoxCalibration, FaceDetector, check_boxes, make_detector
from facemark.errors import WeightsError, WeightsNotFoundError
from facemark.layouts import Layout, get_layout, wflw98_to_300w68
from facemark.models.heatmap import HRNET_FLD_MARKER_KEYS
from facemark.models.weights import read_weights_file, weights_file_errors

__all__ = [
    "FaceLandmarks",
    "ModelBundle",
    "Predictor",
    "load_weights",
    "onnx_session",
    "weights_kind",
    "read_torch_weights",
    "OFFICIAL_SLPT_KEYS",
    "RELEASE_LAYOUTS",
    "METADATA_KEY",
]

# Keys every authors' SLPT state dict has (shared/facts/slpt_official_state_dict_*.txt).
OFFICIAL_SLPT_KEYS = ("Transformer.landmark_query", "feature_extractor.weight", "backbone.conv1.weight")
# The layout of a released checkpoint, from its number of points.
RELEASE_LAYOUTS = {98: "wflw98", 68: "300w68", 29: "cofw29"}
# Name of the JSON metadata inside exported files (ONNX metadata_props / TorchScript extra file).
METADATA_KEY = "facemark"


@dataclass
class FaceLandmarks:
    """One face found in one image.

    Attributes:
        landmarks: ``(K, 2)`` float64, x and y in 0-based pixels of the original image.
        layout: the layout of ``landmarks`` (the 300W-68 one when 68 points were asked for).
        box: ``(x_min, y_min, x_max, y_max)``: the box the face came from (the detector's box, your
            box, or the previous frame's landmark box when tracking), before calibration.
        crop_box: the square region of the image the model saw (last pass), same units.
        score: the detector's confidence when it gives one, else None.
        box_source: ``"detector:<name>"``, ``"user"`` or ``"tracking"``.
    """

    landmarks: np.ndarray
    layout: Layout
    box: np.ndarray
    crop_box: np.ndarray
    score: float | None = None
    box_source: str = "user"

    def to_dict(self) -> dict:
        """JSON-friendly form (what ``facemark predict --format json`` writes per face)."""
        return {
            "box": [round(float(v), 3) for v in self.box],
            "box_source": self.box_source,
            "score": None if self.score is None else float(self.score),
            "crop_box": [round(float(v), 3) for v in self.crop_box],
            "layout": self.layout.name,
            "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in self.landmarks],
        }


@dataclass
class FaceCrops:
    """Faces cut out for the model: ``crops`` (n, 3, S, S) uint8 RGB, ``matrices`` (n, 2, 3)
    original -> crop, ``crop_boxes`` (n, 4) the crop squares in the original image."""

    crops: torch.Tensor
    matrices: np.ndarray
    crop_boxes: np.ndarray

    @staticmethod
    def concatenate(parts: Sequence["FaceCrops"]) -> "FaceCrops":
        return FaceCrops(torch.cat([part.crops for part in parts]), np.concatenate([part.matrices for part in parts]),
                         np.concatenate([part.crop_boxes for part in parts]))


# ------------------------------------------------------------------------------------------------
# Loading weights: a "bundle" = something that maps a batch of crops to normalised landmarks,
# plus the layout and the crop convention it needs.
# ------------------------------------------------------------------------------------------------
@dataclass
class ModelBundle:
    """A runnable model and what is needed to use it on new images.

    ``run(batch)`` takes a ``(B, 3, S, S)`` float32 numpy array (normalised as ``crop.normalisation`` says) and
    returns ``(B, N, 2)`` landmarks in normalised crop coordinates (crop pixels / S).
    ``model`` is the torch module (None for ONNX Runtime and TorchScript files).
    ``device``: where a torch model runs (:meth:`run_crops` normalises there); None for ONNX Runtime.
    """

    run: Callable[[np.ndarray], np.ndarray]
    layout: Layout
    crop: CropConvention
    description: str
    backend: str
    model: nn.Module | None = None
    extra: dict = field(default_factory=dict)
    device: torch.device | None = None
    module: Callable | None = None  # what runs on ``device``: the model or the TorchScript program

    def run_crops(self, crops: torch.Tensor) -> np.ndarray:
        """``run`` on ``(B, 3, S, S)`` uint8 RGB crops: a torch model gets them as uint8 on its
        device and normalised there (:func:`~facemark.data.transforms.normalise_crops`, the
        same numbers as on the CPU); ONNX Runtime gets them normalised on the CPU."""
        if self.module is None:
            return self.run(normalise_crops(crops, self.crop.normalisation).numpy())
        with torch.inference_mode():
            output = self.module(normalise_crops(crops.to(self.device), self.crop.normalisation))
        return _landmarks_array(output)


def _inspect_weights(path: str | Path) -> tuple[str, dict | None]:
    """``(kind, state dict or None)``; see :func:`weights_kind`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    if path.suffix.lower() == ".onnx":
        return "onnx", None
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        with weights_file_errors(path), zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any("/code/" in name for name in names) or any(name.endswith("constants.pkl") for name in names):
            return "torchscript", None
    # The restricted unpickler (weights_only): a file holding anything but tensors and plain values
    # (a pickled payload) is refused here, naming the file, and nothing in it runs. Telling the kind
    # needs the key names only: a zip-format file is memory-mapped, not read (the loader reads it).
    state = read_weights_file(path, "weights", allow_numpy=True, mmap=is_zip)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a {"state_dict": ...} wrapper, which load_official_slpt accepts too
    if isinstance(state, dict) and state.get("format") != "facemark-checkpoint":
        keys = [key for key in state if isinstance(key, str)]
        # A prefixed copy (e.g. "module.") counts too: load_official_slpt then says what is wrong.
        if all(any(key.endswith(marker) for key in keys) for marker in OFFICIAL_SLPT_KEYS):
            return "official_slpt", state
        # The full HRNetV2-W18 with its heatmap head, with no other module around it ("module." allowed).
        if all(any(key in (marker, "module." + marker) for key in keys) for marker in HRNET_FLD_MARKER_KEYS):
            return "hrnet_fld", state
    return "facemark", None


def weights_kind(path: str | Path) -> str:
    """What a weights file is: ``"onnx"``, ``"torchscript"``, ``"official_slpt"``, ``"hrnet_fld"``
    or ``"facemark"``.

    Recognised by content: ONNX by its extension, TorchScript by the ``code/`` folder inside its
    zip archive, an authors' SLPT checkpoint by its state-dict keys (:data:`OFFICIAL_SLPT_KEYS`), a
    released HRNet facial-landmark checkpoint by its keys (``HRNET_FLD_MARKER_KEYS``);
    anything else is read as a facemark checkpoint (whose loader checks its format tag).
    """
    return _inspect_weights(path)[0]


def _landmarks_array(output) -> np.ndarray:
    """A torch model's output (an object with ``landmarks``, or the tensor) as float64 numpy."""
    landmarks = output.landmarks if hasattr(output, "landmarks") else output
    return landmarks.float().cpu().numpy().astype(np.float64)


def _torch_runner(model: nn.Module, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            output = model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device))
        return _landmarks_array(output)

    return run


def _torch_bundle(model: nn.Module, layout: Layout, crop: CropConvention, description: str, device: str) -> ModelBundle:
    device = torch.device(device)
    model = model.to(device).eval()
    return ModelBundle(_torch_runner(model, device), layout, crop, description, "torch", model, device=device,
                       module=model)


def _load_torch_weights(weights, device: str, layout, crop_convention) -> ModelBundle:
    """A torch-backend bundle from a module, a facemark checkpoint or an authors' SLPT file."""
    if isinstance(weights, nn.Module):
        if layout is None or crop_convention is None:
            raise ValueError("Predictor: a model object needs layout= and crop_convention= (a checkpoint file carries both)")
        return _torch_bundle(weights, get_layout(layout), crop_convention, type(weights).__name__, device)
    path = Path(weights)
    with weights_file_errors(path):  # what reading the file raises, not what moving it to device does
        model, file_layout, file_crop, description = read_torch_weights(path, layout, crop_convention)
    return _torch_bundle(model, file_layout, file_crop, description, device)


def _release_layout(path: Path, what: str, num_points: int, layout) -> Layout:
    """The layout given, else the one of a released checkpoint with ``num_points`` points."""
    if layout is not None:
        return get_layout(layout)
    if num_points not in RELEASE_LAYOUTS:
        raise ValueError(f"{path}: {what} with {num_points} points; give layout= (the released ones have "
                         f"{sorted(RELEASE_LAYOUTS, reverse=True)})")
    return get_layout(RELEASE_LAYOUTS[num_points])


def read_torch_weights(path: str | Path, layout=None, crop_convention: CropConvention | None = None
                       ) -> tuple[nn.Module, Layout, CropConvention, str]:
    """The model (on the CPU, eval mode), layout, crop convention and description of a torch
    weights file: a facemark checkpoint or a released SLPT / HRNet facial-landmark checkpoint."""
    path = Path(path)
    kind, state = _inspect_weights(path)
    if kind == "official_slpt":
        from facemark.models.official_slpt import load_official_slpt

        model = load_official_slpt(path)
        layout = _release_layout(path, "an authors' SLPT checkpoint", model.config.num_points, layout)
        return model, layout, crop_convention or slpt_crop_convention(), f"authors' SLPT ({path.name})"
    if kind == "hrnet_fld":
        from facemark.models.heatmap import load_hrnet_fld

        model = load_hrnet_fld(path)
        layout = _release_layout(path, "an HRNet facial-landmark checkpoint", model.num_points, layout)
        # The release crops centre and scale of the tight ground-truth landmark box, x1.25, to
        # 256 x 256 (docs/baselines.md, "Crop of the released checkpoints").
        crop = crop_convention or hrnet_crop_convention(box_source="landmarks")
        return model, layout, crop, f"HRNet facial-landmark release, heatmap ({path.name})"
    if kind == "facemark":
        from facemark.engine.checkpoint import load_model

        loaded = load_model(path)
        return loaded.model, loaded.layout, loaded.crop, loaded.name
    raise ValueError(f"{path}: a {kind} file cannot be run with the torch backend; use backend={kind!r}")


def _metadata_bundle(metadata: dict, path: Path) -> tuple[Layout, CropConvention]:
    try:
        return Layout.from_dict(metadata["layout"], source=f"{path} metadata"), CropConvention.from_dict(metadata["crop"], source=f"{path} metadata")
    except KeyError as error:
        raise ValueError(f"{path}: facemark metadata lacks {error}; re-export it with `facemark export`") from None


def onnx_session(model_bytes_or_path, device: str = "cpu", num_threads: int | None = None):
    """An ONNX Runtime ``InferenceSession`` for an ONNX file path or serialised model bytes, on
    ``device`` (``"cuda..."`` needs onnxruntime-gpu), with ``num_threads`` intra-op threads (None:
    ONNX Runtime's default). What the Predictor's ``backend="onnx"`` and ``facemark bench`` run."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        available = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(f"Predictor: device='cuda' with backend='onnx' needs onnxruntime-gpu (available providers: {available})")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return onnxruntime.InferenceSession(model_bytes_or_path, sess_options=options, providers=providers)


def _onnx_runner(session) -> Callable[[np.ndarray], np.ndarray]:
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        (landmarks,) = session.run(None, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return landmarks.astype(np.float64)

    return run


def load_weights(
    weights,
    device: str = "cpu",
    backend: str | None = None,
    layout: str | Layout | None = None,
    crop_convention: CropConvention | None = None,
    num_threads: int | None = None,
    trust_torchscript: bool = False,
) -> ModelBundle:
    """Load ``weights`` (see the module docstring) for ``backend`` ``"torch"`` or ``"onnx"``;
    ``None`` picks the one the file needs: ONNX Runtime for ``.onnx`` files, torch otherwise.

    With ``backend="onnx"`` and torch weights, the model is exported to ONNX in memory first, so
    any facemark or authors' checkpoint runs in ONNX Runtime without a separate export step.

    Checkpoints and state dicts are read without running code from them. A TorchScript file is a
    program (its ``code/`` is executed by TorchScript's interpreter), so it is run only with
    ``trust_torchscript=True``; ONNX files are graphs of standard operators and need no such trust.
    """
    if backend not in (None, "torch", "onnx"):
        raise ValueError(f"Predictor: backend must be 'torch', 'onnx' or None (the file's own), got {backend!r}")
    kind = "module" if isinstance(weights, nn.Module) else weights_kind(weights)
    if backend is None:
        backend = "onnx" if kind == "onnx" else "torch"
    if kind == "torchscript":
        if backend != "torch":
            raise ValueError(f"{weights}: a TorchScript file runs with backend='torch'")
        if not trust_torchscript:
            raise WeightsError(
                f"{weights} is a TorchScript program: running it executes the code it holds, and facemark does not "
                "run code from a file unless told to. For a file you exported yourself, pass trust_torchscript=True "
                "(command line: --trust-torchscript); or use the checkpoint, or an .onnx export")
        extra = {METADATA_KEY + ".json": ""}
        with weights_file_errors(weights):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in torch >= 2.10
                model = torch.jit.load(str(weights), map_location=device, _extra_files=extra)
            if not extra[METADATA_KEY + ".json"]:
                raise ValueError(f"{weights}: TorchScript file without facemark metadata; export it with `facemark export`")
            metadata = json.loads(extra[METADATA_KEY + ".json"])
            file_layout, file_crop = _metadata_bundle(metadata, Path(weights))
        model.eval()
        return ModelBundle(_torch_runner(model, torch.device(device)), file_layout, file_crop, f"TorchScript ({Path(weights).name})",
                           "torchscript", None, metadata, device=torch.device(device), module=model)
    if kind == "onnx":
        if backend != "onnx":
            raise ValueError(f"{weights}: an ONNX file runs with backend='onnx'")
        import onnx

        with weights_file_errors(weights):
            proto = onnx.load(str(weights), load_external_data=False)
            props = {p.key: p.value for p in proto.metadata_props}
            if METADATA_KEY not in props:
                raise ValueError(f"{weights}: ONNX file without facemark metadata (key {METADATA_KEY!r}); export it with `facemark export`")
            metadata = json.loads(props[METADATA_KEY])
            file_layout, file_crop = _metadata_bundle(metadata, Path(weights))
        session = onnx_session(str(weights), device, num_threads)
        return ModelBundle(_onnx_runner(session), file_layout, file_crop, f"ONNX ({Path(weights).name})", "onnx", None, metadata)

    if backend == "onnx" and isinstance(weights, nn.Module):
        # ONNX Runtime runs an export of a CPU copy: the caller's model keeps its device and mode.
        weights = copy.deepcopy(weights)
    bundle = _load_torch_weights(weights, "cpu" if backend == "onnx" else device, layout, crop_convention)
    if backend == "torch":
        return bundle
    from facemark.inference.export import onnx_model_bytes

    session = onnx_session(onnx_model_bytes(bundle.model, bundle.layout, bundle.crop), device, num_threads)
    return ModelBundle(_onnx_runner(session), bundle.layout, bundle.crop, bundle.description + " via ONNX Runtime", "onnx", bundle.model)


# ------------------------------------------------------------------------------------------------
# The predictor
# ------------------------------------------------------------------------------------------------
def _as_rgb_image(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        from facemark.data.records import read_image_rgb

        return read_image_rgb(image)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        description = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"Predictor: an image must be an (H, W, 3) uint8 RGB array or a file path, got {description}")
    return image


class Predictor:
    """Face landmarks on new images.

    Args:
        weights: a facemark checkpoint, an authors' SLPT checkpoint, an exported ``.onnx`` /
            TorchScript file, or an ``nn.Module`` (then give ``layout`` and ``crop_convention``).
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"``...).
        backend: ``"torch"``, ``"onnx"`` (ONNX Runtime; torch weights are converted in memory) or
            None (default): ONNX Runtime for an ``.onnx`` file, torch for everything else.
        detector: finds faces when no boxes are given: a name, ``"auto"`` (default: the best
            detector installed, docs/inference.md), ``"mediapipe-full"``, ``"mediapipe-short"``,
            ``"dlib-hog"`` or ``"haar"`` (:func:`~facemark.inference.detectors.make_detector`; for
            YuNet or a minimum face size build one with it), any object with
            ``detect(image) -> (n, 4|5) boxes`` (:class:`~facemark.inference.detectors.FaceDetector`),
            or None (then every call must give boxes).
        detector_calibration: maps the detector's boxes to the model's box source; default: the
            detector's own ``calibration`` attribute (measured on real faces, docs/inference.md).
        box_calibration: the same for boxes you pass to :meth:`predict`; default identity (your
            boxes are taken to be the model's box source, e.g. the tight landmark box for SLPT).
        output_layout: ``None`` (the model's points) or ``"300w68"`` to get 68 points from a
            98-point WFLW model (:func:`facemark.layouts.wflw98_to_300w68`).
        passes: crops per face. With 2 or more and a ``box_source="landmarks"`` model, each pass
            re-crops around the previous pass's landmarks, exactly the training crop: this
            removes most of the error of a badly calibrated detector box, at the cost of one more
            forward pass.
        batch_size: faces per forward pass.
        num_threads: CPU threads (torch: ``torch.set_num_threads``, process-wide; ONNX Runtime:
            this session only). None leaves the defaults.
        layout, crop_convention: for ``nn.Module`` weights (files carry their own).
        trust_torchscript: run a TorchScript file (a program; refused by default, see
            :func:`load_weights`). Checkpoints are always read without running code from them.

    Raises :class:`facemark.errors.WeightsError` (a ``ValueError``) when the weights file cannot be
    used and :class:`facemark.errors.WeightsNotFoundError` (a ``FileNotFoundError``) when it does
    not exist; either message is one line naming the file.
    """

    def __init__(
        self,
        weights,
        device: str = "cpu",
        backend: str | None = None,
        detector: str | FaceDetector | None = "auto",
        detector_calibration: BoxCalibration | None = None,
        box_calibration: BoxCalibration = IDENTITY_CALIBRATION,
        output_layout: str | None = None,
        passes: int = 1,
        batch_size: int = 32,
        num_threads: int | None = None,
        layout: str | Layout | None = None,
        crop_convention: CropConvention | None = None,
        trust_torchscript: bool = False,
    ) -> None:
        self.bundle = load_weights(weights, device, backend, layout, crop_convention, num_threads, trust_torchscript)
        if num_threads is not None and self.bundle.backend != "onnx":  # ONNX Runtime got them per session
            torch.set_num_threads(num_threads)
        self.layout = self.bundle.layout
        self.crop = self.bundle.crop
        self.device = device
        self.backend = self.bundle.backend
        if isinstance(detector, str):
            if detector not in DETECTOR_NAMES or detector == "yunet":
                names = ", ".join(repr(n) for n in DETECTOR_NAMES if n != "yunet")
                raise ValueError(f"Predictor: detector must be one of {names}, a detector object (e.g. make_detector('yunet', yunet_model=FILE)) or None, got {detector!r}")
            detector = make_detector(detector)
        if detector is not None and not callable(getattr(detector, "detect", None)):
            raise TypeError(f"Predictor: detector {detector!r} has no detect(image) method")
        self.detector = detector
        if detector_calibration is None:
            detector_calibration = getattr(detector, "calibration", None) or IDENTITY_CALIBRATION
        self.detector_calibration = detector_calibration
        self.box_calibration = box_calibration
        if output_layout is not None:
            wanted = get_layout(output_layout)
            if wanted.name != self.layout.name and not (wanted.name == "300w68" and self.layout.name == "wflw98"):
                raise ValueError(f"Predictor: cannot convert {self.layout.name} landmarks to {wanted.name}; only wflw98 -> 300w68 is defined")
            self.output_layout = wanted
        else:
            self.output_layout = self.layout
        if not (isinstance(passes, int) and passes >= 1):
            raise ValueError(f"Predictor: passes must be an integer >= 1, got {passes!r}")
        self.passes = passes
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"Predictor: batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (
            f"Predictor({self.bundle.description}, backend={self.bundle.backend!r}, layout={self.layout.name!r}, "
            f"crop={self.crop.to_dict()}, detector={getattr(self.detector, 'name', type(self.detector).__name__)})"
        )

    # -- public API --------------------------------------------------------------------------
    def predict(self, image, boxes=None) -> list[FaceLandmarks]:
        """Landmarks of every face in ``image`` (an ``(H, W, 3)`` uint8 RGB array or a file path).

        ``boxes``: ``(n, 4)`` face boxes ``(x_min, y_min, x_max, y_max)`` (a 5th column is a
        score); None runs the detector. One :class:`FaceLandmarks` per face, in box order
        (detector: highest score first).
        """
        return self.predict_batch([image], None if boxes is None else [boxes])[0]

    def predict_batch(self, images: Sequence, boxes: Sequence | None = None) -> list[list[FaceLandmarks]]:
        """:meth:`predict` for several images; the faces of all images share forward passes."""
        images = [_as_rgb_image(image) for image in images]
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"Predictor.predict_batch: {len(images)} images but {len(boxes)} box lists")
        requests = []
        for index, image in enumerate(images):
            given = None if boxes is None else boxes[index]
            requests.append(self._boxes_for(image, given))
        return self._predict_from_boxes(images, requests)

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, list[float | None]]:
        """The detector's ``(n, 4)`` boxes and scores (no calibration applied)."""
        if self.detector is None:
            raise ValueError("Predictor: no detector (detector=None); give the face boxes")
        found = check_boxes(self.detector.detect(image), f"detector {getattr(self.detector, 'name', type(self.detector).__name__)}")
        scores = [float(s) for s in found[:, 4]] if found.shape[1] == 5 else [None] * len(found)
        return found[:, :4], scores

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """The raw model on ready crops: ``(B, 3, S, S)`` normalised input -> ``(B, N, 2)``
        normalised crop coordinates (the exported model's contract; used for backend parity)."""
        outputs = [self.bundle.run(crops[start : start + self.batch_size]) for start in range(0, len(crops), self.batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0, self.layout.num_points, 2))

    # -- internals -----------------------------------------------------------------------------
    def _boxes_for(self, image: np.ndarray, given) -> dict:
        """The faces of one image: original boxes, scores, their source and calibrated boxes."""
        if given is None:
            found, scores = self.detect(image)
            name = getattr(self.detector, "name", type(self.detector).__name__)
            return {"boxes": found, "scores": scores, "source": f"detector:{name}", "calibration": self.detector_calibration}
        given = check_boxes(given, "boxes given to Predictor.predict")
        scores = [float(s) for s in given[:, 4]] if given.shape[1] == 5 else [None] * len(given)
        return {"boxes": given[:, :4], "scores": scores, "source": "user", "calibration": self.box_calibration}

    def convert_layout(self, landmarks: np.ndarray) -> np.ndarray:
        """The model's ``(..., N, 2)`` landmarks in the output layout (68 points when asked)."""
        return landmarks if self.output_layout is self.layout else wflw98_to_300w68(landmarks)

    def _predict_from_boxes(self, images: list[np.ndarray], requests: list[dict], convert_layout: bool = True,
                            first_crops: list[FaceCrops] | None = None) -> list[list[FaceLandmarks]]:
        """Faces from per-image requests ``{"boxes", "scores", "source", "calibration"}``.
        ``convert_layout=False`` returns the model's own points (the video tracker needs them).
        ``first_crops``: each image's :meth:`crop_request` when already made (by a worker process)."""
        owners = [i for i, request in enumerate(requests) for _ in range(len(request["boxes"]))]
        if not owners:
            return [[] for _ in images]
        if first_crops is None:
            first_crops = [self.crop_request(image, request) for image, request in zip(images, requests)]
        landmarks, crop_boxes = self._landmarks(FaceCrops.concatenate(first_crops))
        for _ in range(self.passes - 1):
            if self.crop.box_source != "landmarks":
                break  # re-cropping from landmarks is the training crop only for landmark-box models
            model_boxes = np.array([landmark_box(points) for points in landmarks])
            landmarks, crop_boxes = self._landmarks(self._crop_faces([images[owner] for owner in owners], model_boxes))
        layout = self.layout
        if convert_layout:
            landmarks, layout = self.convert_layout(landmarks), self.output_layout
        results: list[list[FaceLandmarks]] = [[] for _ in images]
        flat = [(r["boxes"][j], r["scores"][j], r["source"]) for r in requests for j in range(len(r["boxes"]))]
        for face, (owner, (box, score, source)) in enumerate(zip(owners, flat)):
            results[owner].append(FaceLandmarks(landmarks[face], layout, np.asarray(box, dtype=np.float64), crop_boxes[face], score, source))
        return results

    def crop_request(self, image: np.ndarray, request: dict) -> FaceCrops:
        """The model's crops of one image's faces (a :meth:`_boxes_for` request), before the model:
        the part of a prediction that a worker process can do."""
        if not len(request["boxes"]):
            return self._crop_faces([], np.zeros((0, 4)))
        return self._crop_faces([image] * len(request["boxes"]), request["calibration"].apply(request["boxes"]))

    def _crop_faces(self, images: list[np.ndarray], model_boxes: np.ndarray) -> FaceCrops:
        """Face ``i``'s crop from ``images[i]`` around ``model_boxes[i]`` (in the model's box source)."""
        size = self.crop.size
        matrices, crop_boxes, crops = [], [], []
        for image, box in zip(images, model_boxes):
            crop_box = square_box(box, self.crop.enlarge, where=f"face box {np.round(box, 2).tolist()}")
            matrix = crop_matrix(crop_box, size)
            crops.append(crop_to_tensor(warp_image(image, matrix, size)))
            matrices.append(matrix)
            crop_boxes.append(np.asarray(crop_box.corners()))
        if not crops:
            return FaceCrops(torch.zeros((0, 3, size, size), dtype=torch.uint8), np.zeros((0, 2, 3)), np.zeros((0, 4)))
        return FaceCrops(torch.stack(crops), np.stack(matrices), np.stack(crop_boxes))

    def _landmarks(self, faces: FaceCrops) -> tuple[np.ndarray, np.ndarray]:
        """Run the model on the crops (uint8: normalised where the model runs, ModelBundle.run_crops)
        and map the landmarks back to the original images."""
        normalised = np.concatenate([self.bundle.run_crops(faces.crops[start : start + self.batch_size])
                                     for start in range(0, len(faces.crops), self.batch_size)])
        if normalised.shape[1:] != (self.layout.num_points, 2):
            raise RuntimeError(f"Predictor: the model returned shape {normalised.shape}, expected (B, {self.layout.num_points}, 2)")
        landmarks = crop_to_image(denormalise_landmarks(normalised, self.crop.size), faces.matrices)
        return landmarks, faces.crop_boxes
