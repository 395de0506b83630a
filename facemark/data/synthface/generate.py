"""Writing SynthFace datasets in the native formats of WFLW, 300W and COFW, and the preview sheet.

Every image has its own random generator, seeded from ``(seed, split, index)`` with
``numpy.random.SeedSequence``: the files do not depend on the number of worker processes or the
order in which images are made.
"""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from facemark.data.synthface.render import RenderedFace, render_face, sample_face_params
from facemark.layouts import Layout, get_layout

__all__ = ["FORMATS", "OWN_LAYOUTS", "FACE5", "SPLIT_IDS", "face_generator", "render_sample", "generate_dataset",
           "write_preview", "preview_sheet"]

# The benchmarks' release formats, then the own-data formats (facemark.data.own).
BENCHMARK_FORMATS = ("wflw", "300w", "cofw")
OWN_FORMATS = ("manifest", "pts_folder", "coco")
FORMATS = BENCHMARK_FORMATS + OWN_FORMATS
# A 5-point layout made from SynthFace's WFLW points, as an own layout: the pupils (96, 97), the
# nose tip (54) and the mouth corners (76, 82); the eyes are also its normaliser.
FACE5_FROM_WFLW98 = (96, 97, 54, 76, 82)
FACE5 = Layout(
    name="face5",
    num_points=5,
    groups={"eyes": (0, 1), "nose": (2,), "mouth": (3, 4)},
    flip_permutation=(1, 0, 2, 4, 3),
    inter_ocular=(0, 1),
    inter_pupil=((0,), (1,)),
    point_groups=("eyes", "nose"),
    point_names=("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right"),
)
# The layouts an own-data format can be written with: SynthFace's three sets of points and FACE5.
OWN_LAYOUTS = ("wflw98", "300w68", "cofw29", "face5")
# The split is part of each image's seed, so train and test never share an image.
SPLIT_IDS = {"train": 0, "test": 1, "preview": 2}
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
# 300W release folders the synthetic images are spread over (the reader's splits are unions of
# these): train round-robin over afw / helen / lfpw; test faces with a large pose, an
# exaggerated expression or an occlusion go to the challenging subset (ibug), the others
# alternate between helen/testset and lfpw/testset (the common subset).
W300_TRAIN_FOLDERS = ("afw", "helen/trainset", "lfpw/trainset")
W300_COMMON_FOLDERS = ("helen/testset", "lfpw/testset")
W300_CHALLENGING_FOLDER = "ibug"


def face_generator(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of ``split`` ("train", "test" or "preview")."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown SynthFace split {split!r}; expected one of {list(SPLIT_IDS)}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(SPLIT_IDS[split], int(index)))))


def render_sample(seed: int, split: str, index: int, size: int = 256) -> RenderedFace:
    """Render image ``index`` of ``split`` for ``seed`` (exactly the image a dataset holds, before
    JPEG compression)."""
    rng = face_generator(seed, split, index)
    return render_face(sample_face_params(rng, size), rng)


def _encode(image_rgb: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG image")
    return data.tobytes()


def _make(task: tuple[int, str, int, int]) -> dict:
    """Worker: render one image and JPEG-encode it (what every format stores)."""
    seed, split, index, size = task
    face = render_sample(seed, split, index, size)
    return {
        "index": index,
        "jpeg": _encode(face.image, face.jpeg_quality),
        "landmarks": face.landmarks,
        "occluded": face.occluded,
        "box": face.box,
        "flags": face.flags,
    }


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one image per process; OpenCV's own threads only add overhead


def _faces(seed: int, split: str, count: int, size: int, workers: int, progress: bool) -> Iterator[dict]:
    """Rendered faces of a split, in index order, from ``workers`` processes."""
    tasks = [(seed, split, index, size) for index in range(count)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=count, desc=f"SynthFace {split}", unit="img")
    try:
        if workers <= 1:
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                for task in tasks:
                    yield _make(task)
                    if bar is not None:
                        bar.update(1)
            finally:
                cv2.setNumThreads(threads)
        else:
            # "spawn", not the default fork: forking a process whose OpenMP/OpenCV thread pools are
            # already running (e.g. after torch has run) can deadlock the children.
            with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for face in pool.imap(_make, tasks, chunksize=max(1, min(32, count // (4 * workers) or 1))):
                    yield face
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _decode(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _w300_folders(split: str, flags: list[tuple[int, ...]]) -> list[str]:
    """The 300W release folder of each image of a split; every folder gets at least one."""
    count = len(flags)
    if split == "train":
        folders = [W300_TRAIN_FOLDERS[i % 3] for i in range(count)]
        needed = W300_TRAIN_FOLDERS
    else:
        folders, common = [], 0
        for row in flags:
            hard = row[0] or row[1] or row[4]  # pose, expression, occlusion
            if hard:
                folders.append(W300_CHALLENGING_FOLDER)
            else:
                folders.append(W300_COMMON_FOLDERS[common % 2])
                common += 1
        needed = W300_COMMON_FOLDERS + (W300_CHALLENGING_FOLDER,)
    for folder in needed:  # tiny sets: move the last image of the fullest folder
        if folder not in folders:
            fullest = max(needed, key=folders.count)
            last = max(i for i, f in enumerate(folders) if f == fullest)
            folders[last] = folder
    return folders


def generate_dataset(
    out_dir: str | Path,
    num_train: int,
    num_test: int,
    seed: int = 0,
    size: int = 256,
    format: str = "wflw",
    workers: int = 1,
    progress: bool = True,
    layout: str = "wflw98",
) -> dict:
    """Write a SynthFace dataset under ``out_dir`` in a benchmark's native release format, so that
    ``facemark.data.load_dataset(format, out_dir, split)`` reads it unchanged.

    Args:
        out_dir: the dataset root (created).
        num_train, num_test: images per split (0 skips a split). The 300W format needs 0 or at
            least 3 images per split (one per release folder of the split).
        seed: the dataset seed; the same seed gives the same files on any machine and any number
            of ``workers`` (with the same numpy / OpenCV versions).
        size: image side in pixels (square images).
        format: "wflw" (98 points, default), "300w" (68 points; test images split into the
            common and challenging subsets) or "cofw" (29 points with occlusion flags; also
            writes the COFW68 68-point annotations of the test images); or an own-data format
            (``docs/own_data.md``): "manifest" (``train.csv``, ``test.csv``, images under
            ``images/``), "pts_folder" (``train/``, ``test/``: images with .pts files) or "coco"
            (``train.json``, ``test.json``, images under ``images/``), with ``layout.yaml``.
        layout: the points of an own-data format: one of :data:`OWN_LAYOUTS` ("face5": 5 points,
            :data:`FACE5`).
        workers: processes rendering in parallel.
        progress: show a progress bar (tqdm).

    Returns:
        A summary (also written to ``out_dir/synthface.json``): the arguments, the number of
        images per split, and each WFLW attribute's count per split.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown SynthFace format {format!r}; expected one of {list(FORMATS)}")
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if format == "300w" and 0 < value < 3:
            raise ValueError(f"{name}={value}: the 300W format needs 0 or at least 3 images per split (one per release folder)")
    if int(size) != size or size < 32:
        raise ValueError(f"size must be an integer >= 32 pixels, got {size!r}")
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if format in OWN_FORMATS and layout not in OWN_LAYOUTS:
        raise ValueError(f"unknown SynthFace layout {layout!r}; expected one of {list(OWN_LAYOUTS)}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    summary: dict = {
        "generator": "facemark SynthFace",
        "format": format,
        "seed": int(seed),
        "size": int(size),
        "splits": {},
    }
    if format in OWN_FORMATS:
        summary["layout"] = layout
        own_layout = FACE5 if layout == "face5" else get_layout(layout)
        import yaml

        (root / "layout.yaml").write_text(yaml.safe_dump(own_layout.to_dict(), sort_keys=False, default_flow_style=None), encoding="utf-8")
    for split, count in (("train", int(num_train)), ("test", int(num_test))):
        if count == 0:
            continue
        faces = _faces(int(seed), split, count, int(size), int(workers), progress)
        if format == "wflw":
            flags = _write_wflw(root, split, faces)
        elif format == "300w":
            flags = _write_300w(root, split, faces)
        elif format == "cofw":
            flags = _write_cofw(root, split, faces)
        else:
            flags = _write_own(root, split, faces, format, own_layout, int(size))
        flags_array = np.array(flags, dtype=np.int64).reshape(-1, len(WFLW_ATTRIBUTES))
        summary["splits"][split] = {
            "images": count,
            "attributes": {name: int(flags_array[:, k].sum()) for k, name in enumerate(WFLW_ATTRIBUTES)},
        }
    (root / "synthface.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_wflw(root: Path, split: str, faces: Iterator[dict]) -> list[tuple[int, ...]]:
    from facemark.data import wflw_annotation_path, write_wflw_annotations, write_wflw_subset_lists

    folder = f"0--SynthFace_{split}"
    (root / "WFLW_images" / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for face in faces:
        relative = f"{folder}/synthface_{split}_{face['index']:06d}.jpg"
        (root / "WFLW_images" / relative).write_bytes(face["jpeg"])
        rows.append((face["landmarks"]["wflw98"], face["box"], face["flags"], relative))
    write_wflw_annotations(wflw_annotation_path(root, split), rows)
    if split == "test":
        write_wflw_subset_lists(root, rows)
    return [row[2] for row in rows]


def _write_300w(root: Path, split: str, faces: Iterator[dict]) -> list[tuple[int, ...]]:
    from facemark.data import write_pts

    faces = list(faces)
    flags = [face["flags"] for face in faces]
    for face, folder in zip(faces, _w300_folders(split, flags)):
        stem = root / folder / f"synthface_{split}_{face['index']:06d}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".jpg").write_bytes(face["jpeg"])
        write_pts(stem.with_suffix(".pts"), face["landmarks"]["300w68"])
    return flags


def _write_cofw(root: Path, split: str, faces: Iterator[dict]) -> list[tuple[int, ...]]:
    from facemark.data import cofw_mat_path, write_cofw68_annotations, write_cofw_mat

    images, landmarks, occluded, boxes, flags, landmarks68, occluded68 = [], [], [], [], [], [], []
    for face in faces:
        images.append(_decode(face["jpeg"]))  # COFW stores pixels: keep the JPEG artefacts
        landmarks.append(face["landmarks"]["cofw29"])
        occluded.append(face["occluded"]["cofw29"])
        landmarks68.append(face["landmarks"]["300w68"])
        occluded68.append(face["occluded"]["300w68"])
        boxes.append(face["box"])
        flags.append(face["flags"])
    boxes_array = np.array(boxes, dtype=np.float64)
    write_cofw_mat(cofw_mat_path(root, split), split, images, np.array(landmarks), boxes_array, np.array(occluded))
    if split == "test":
        write_cofw68_annotations(root, np.array(landmarks68), np.array(occluded68), boxes_array)
    return flags


def _own_points(face: dict, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    if layout.name == FACE5.name:
        return face["landmarks"]["wflw98"][list(FACE5_FROM_WFLW98)], face["occluded"]["wflw98"][list(FACE5_FROM_WFLW98)]
    return face["landmarks"][layout.name], face["occluded"][layout.name]


def _write_own(root: Path, split: str, faces: Iterator[dict], format: str, layout: Layout,
               size: int) -> list[tuple[int, ...]]:
    """Images and annotations of one split in an own-data format (facemark.data.own's writers)."""
    from facemark.data.own import write_coco, write_manifest, write_pts_folder
    from facemark.data.records import FaceRecord

    image_folder = root / split if format == "pts_folder" else root / "images" / split
    image_folder.mkdir(parents=True, exist_ok=True)
    records, flags = [], []
    for face in faces:
        # absolute: the writers take relative image paths as relative to the annotation's folder
        image_path = (image_folder / f"synthface_{split}_{face['index']:06d}.jpg").absolute()
        image_path.write_bytes(face["jpeg"])
        landmarks, occluded = _own_points(face, layout)
        records.append(FaceRecord(
            identifier=image_path.name, landmarks=np.asarray(landmarks, dtype=np.float64), layout=layout,
            box=tuple(float(v) for v in face["box"]), occluded=np.asarray(occluded, dtype=bool),
            attributes=dict(zip(WFLW_ATTRIBUTES, (int(v) for v in face["flags"]))), image_path=image_path,
        ))
        flags.append(face["flags"])
    if format == "manifest":
        write_manifest(root / f"{split}.csv", records)
    elif format == "pts_folder":
        write_pts_folder(root / split, records)
    else:
        sizes = {f"images/{split}/{record.image_path.name}": (size, size) for record in records}
        write_coco(root / f"{split}.json", records, layout, image_sizes=sizes)
    return flags


# --- preview -------------------------------------------------------------------------------------
def preview_sheet(num: int = 16, seed: int = 0, size: int = 256, columns: int = 4, cell_size: int | None = None) -> np.ndarray:
    """A contact sheet of ``num`` preview-split samples of ``size`` pixels with their 98
    landmarks drawn (occluded ones in red), labelled with their WFLW attributes: first one face
    per attribute, then faces in order. ``cell_size`` resizes the cells (default ``size``)."""
    from facemark.layouts import WFLW98
    from facemark.visualize import draw_landmarks, image_grid

    if num < 1 or columns < 1:
        raise ValueError(f"num and columns must be >= 1, got num={num}, columns={columns}")
    chosen: list[RenderedFace] = []
    wanted = list(range(len(WFLW_ATTRIBUTES)))
    plain: list[RenderedFace] = []
    index = 0
    while len(chosen) + len(plain) < num or (wanted and index < 50 * num):
        face = render_sample(seed, "preview", index, size)
        index += 1
        hit = next((k for k in wanted if face.flags[k]), None)
        if hit is not None and len(chosen) < num:
            wanted.remove(hit)
            chosen.append(face)
        elif len(plain) < num:
            plain.append(face)
        if len(chosen) + len(plain) >= num and not wanted:
            break
        if index >= 50 * num:
            break
    faces = (chosen + plain)[:num]
    cells = []
    radius = max(1, size // 200)
    for face in faces:
        image = _decode(_encode(face.image, face.jpeg_quality))
        landmarks = face.landmarks["wflw98"]
        cell = draw_landmarks(image, landmarks, WFLW98, radius=radius)
        hidden = face.occluded["wflw98"]
        if hidden.any():
            cell = draw_landmarks(cell, np.where(hidden[:, None], landmarks, np.nan), None, colour=(255, 40, 40), radius=radius, edges=False)
        label = " ".join(name for name, flag in zip(WFLW_ATTRIBUTES, face.flags) if flag) or "plain"
        cv2.putText(cell, label, (4, 14), cv2.FONT_HERSHEY_PLAIN, 0.9, (255, 255, 255), 1, cv2.LINE_AA)
        cells.append(cell)
    return image_grid(cells, columns, cell_size or size)


def write_preview(path: str | Path, num: int = 16, seed: int = 0, size: int = 256, columns: int = 4, cell_size: int | None = None) -> Path:
    """Write :func:`preview_sheet` as an image file (PNG or JPEG by the suffix)."""
    path = Path(path)
    sheet = preview_sheet(num, seed, size, columns, cell_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write the preview to {path} (unknown image suffix {path.suffix!r}?)")
    return path
