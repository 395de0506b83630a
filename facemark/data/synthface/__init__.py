"""SynthFace: facemark's built-in procedural face-landmark dataset (``docs/synthface.md``).

Faces are rendered from a parametric 3D head whose WFLW (98), 300W (68) and COFW (29) landmarks
are points of the same curves, with identity, expression, pose, light, make-up, occluders, blur,
noise and JPEG compression, and written in the benchmarks' native formats so that
``facemark.data.load_dataset`` reads them unchanged.

- :func:`generate_dataset` writes a dataset; :func:`write_preview` a contact sheet.
- :func:`render_sample` renders one image of a dataset; :func:`render_face` renders from
  explicit :class:`FaceParams` (see :func:`sample_face_params`).
"""
from facemark.data.synthface.generate import FORMATS, face_generator, generate_dataset, preview_sheet, render_sample, write_preview
from facemark.data.synthface.head import Expression, HeadModel, Identity, Pose, LANDMARK_SPECS
from facemark.data.synthface.render import ATTRIBUTE_RATES, Appearance, FaceParams, RenderedFace, render_face, sample_face_params

__all__ = [
    "FORMATS",
    "ATTRIBUTE_RATES",
    "generate_dataset",
    "write_preview",
    "preview_sheet",
    "render_sample",
    "render_face",
    "sample_face_params",
    "face_generator",
    "FaceParams",
    "Appearance",
    "RenderedFace",
    "Identity",
    "Expression",
    "Pose",
    "HeadModel",
    "LANDMARK_SPECS",
]
