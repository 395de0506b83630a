"""Datasets: native readers of WFLW, 300W, COFW and COFW68, the records they return, and the
writers of the same formats.

``load_dataset(name, root, split)`` reads a benchmark exactly as released (``docs/datasets.md``).
Conventions of every record: landmarks ``(K, 2)`` float64 in 0-based pixels of the original
image, never clipped; box ``(x_min, y_min, x_max, y_max)`` 0-based or None.
"""
from __future__ import annotations

from pathlib import Path

from facemark.data.cofw import COFW68_SPLITS, COFW_SPLITS, load_cofw, load_cofw68
from facemark.data.own import OWN_FORMATS, load_own, read_coco, read_manifest, read_pts_folder, write_coco, write_manifest, write_pts_folder
from facemark.data.records import DatasetWarning, FaceRecord, LandmarkDataset, read_image_rgb
from facemark.data.w300 import W300_SPLITS, load_300w, read_pts
from facemark.data.wflw import WFLW_ATTRIBUTES, WFLW_SPLITS, load_wflw
from facemark.data.writers import (
    cofw_mat_path,
    wflw_annotation_path,
    wflw_subset_list_path,
    write_cofw68_annotations,
    write_cofw_mat,
    write_pts,
    write_wflw_annotations,
    write_wflw_subset_lists,
)

__all__ = [
    "load_dataset",
    "DATASET_SPLITS",
    "OWN_FORMATS",
    "read_manifest",
    "read_pts_folder",
    "read_coco",
    "write_manifest",
    "write_pts_folder",
    "write_coco",
    "DatasetWarning",
    "FaceRecord",
    "LandmarkDataset",
    "read_image_rgb",
    "read_pts",
    "WFLW_ATTRIBUTES",
    "wflw_annotation_path",
    "wflw_subset_list_path",
    "cofw_mat_path",
    "write_wflw_annotations",
    "write_wflw_subset_lists",
    "write_pts",
    "write_cofw_mat",
    "write_cofw68_annotations",
]

# dataset name -> its valid splits.
DATASET_SPLITS: dict[str, tuple[str, ...]] = {
    "wflw": WFLW_SPLITS,
    "300w": W300_SPLITS,
    "cofw": COFW_SPLITS,
    "cofw68": COFW68_SPLITS,
}
_LOADERS = {"wflw": load_wflw, "300w": load_300w, "cofw": load_cofw, "cofw68": load_cofw68}


def load_dataset(name: str, root: str | Path, split: str, check_images: bool = True,
                 layout=None) -> LandmarkDataset:
    """Read split ``split`` of dataset ``name`` from ``root``, the folder the user unpacked.

    ``name``: "wflw", "300w", "cofw" or "cofw68" (valid splits in :data:`DATASET_SPLITS`), or an
    own-data format of :data:`OWN_FORMATS` ("manifest", "pts_folder", "coco"; ``split`` is then
    the file or folder relative to ``root`` and ``layout``, a name, YAML file or Layout, says what
    the points mean; :mod:`facemark.data.own`).
    With ``check_images`` every image must exist (checked cheaply at load time; images are
    decoded lazily by ``record.load_image()``). Malformed input raises an error naming the file
    (and line or key) and what was expected.
    """
    key = str(name).lower()
    if key in OWN_FORMATS:
        if not Path(root).is_dir():
            raise FileNotFoundError(f"dataset root folder {root} does not exist (expected the folder of your {key} data)")
        return load_own(key, root, split, layout, check_images=check_images)
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASET_SPLITS) + list(OWN_FORMATS)}")
    if split not in DATASET_SPLITS[key]:
        raise ValueError(f"unknown split {split!r} of dataset {key!r}; expected one of {list(DATASET_SPLITS[key])}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root folder {root} does not exist (expected the unpacked {key} release)")
    return _LOADERS[key](root, split, check_images=check_images)
