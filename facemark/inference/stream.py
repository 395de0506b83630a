"""The record stream of ``facemark predict``: results written as they come, resumed, merged.

Every process appends one JSON line per finished input to its own stream file in ``--out``:
``predictions.jsonl`` for a single process, ``predictions.rank<r>.jsonl`` for rank ``r`` of a
``torchrun`` launch. The first line of a stream file is its header (the weights, model, layout,
crop convention, detector and calibrations: what the landmarks depend on); each further line is
one record::

    {"type": "image", "file": ..., "width": ..., "height": ..., "faces": [...]}
    {"type": "video", "file": ..., "fps": ..., "frames": [...], ...}
    {"type": "failed", "file": ..., "reason": ...}
    {"type": "skipped_link", "file": ..., "reason": ...}

Each line is flushed to the operating system when written, so a run that is killed loses at most
the line it was writing (cut off without its newline: dropped, with a warning, when the file is
resumed). A process holds an exclusive lock (``flock``) on its stream file while it writes, so
two runs can never write into one file at once. ``predictions.json`` / ``predictions.csv`` are
made from all the stream files of the folder at the end (:func:`merge_streams`), reading one
record at a time: memory does not grow with the number of records beyond one small index entry
per input.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import IO, Iterable, Iterator

__all__ = [
    "STREAM_NAME",
    "StreamWriter",
    "stream_path",
    "stream_files",
    "existing_outputs",
    "read_stream",
    "finished_inputs",
    "merge_streams",
    "csv_columns",
]

STREAM_NAME = "predictions.jsonl"
STREAM_FORMAT = "facemark-predictions-stream"
STREAM_VERSION = 1
_SHARD = re.compile(r"^predictions\.rank(\d+)\.jsonl$")
FINISHED = ("image", "video")  # record types that mean "this input is done"


def stream_path(out: Path, rank: int, world_size: int) -> Path:
    """The stream file of one process: ``predictions.jsonl``, or ``predictions.rank<r>.jsonl``
    when ``world_size`` > 1."""
    return out / (STREAM_NAME if world_size <= 1 else f"predictions.rank{rank}.jsonl")


def stream_files(out: Path) -> list[Path]:
    """The stream files in ``out``: ``predictions.jsonl`` first, then the shards by rank."""
    if not out.is_dir():
        return []
    shards = sorted((int(match.group(1)), path) for path in out.iterdir() if (match := _SHARD.match(path.name)))
    single = [out / STREAM_NAME] if (out / STREAM_NAME).is_file() else []
    return single + [path for _, path in shards]


def existing_outputs(out: Path) -> list[Path]:
    """Prediction files an earlier run left in ``out`` (stream files, predictions.json / .csv)."""
    finals = [out / name for name in ("predictions.json", "predictions.csv") if (out / name).is_file()]
    return stream_files(out) + finals


class StreamWriter:
    """Appends records to one stream file, one flushed JSON line each, under an exclusive lock.

    It keeps nothing but the open file: memory does not grow with the number of records.
    A file that ends in a cut-off line (a killed run) is cut back to its last complete line.
    """

    def __init__(self, path: Path, header: dict) -> None:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file: IO[str] = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise RuntimeError(f"{path} is being written by another facemark predict (it holds the file's lock); "
                               "wait for it to finish or give another --out") from None
        self.dropped_tail = self._cut_incomplete_tail()
        if self.file.tell() == 0:
            self.write({"type": "header", "format": STREAM_FORMAT, "version": STREAM_VERSION, **header})

    def _cut_incomplete_tail(self) -> int:
        """Cut a last line without its newline (a write the process did not finish); its size."""
        self.file.seek(0, 2)
        size = self.file.tell()
        if size == 0:
            return 0
        with self.path.open("rb") as raw:
            raw.seek(max(0, size - 1))
            if raw.read(1) == b"\n":
                return 0
            # Find the last newline, reading backwards in blocks.
            end = size
            while end > 0:
                start = max(0, end - 65536)
                raw.seek(start)
                block = raw.read(end - start)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                end = start
            else:
                keep = 0
        self.file.truncate(keep)
        self.file.seek(keep)
        return size - keep

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()  # to the operating system: a killed process loses at most this line

    def close(self) -> None:
        self.file.close()  # releases the lock

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_stream(path: Path) -> Iterator[tuple[int, dict]]:
    """``(byte offset, record)`` for every line of a stream file after its header. A line that is
    not a JSON object with a ``type`` is an error naming the file and line; a cut-off last line
    (no newline: a killed run) is skipped."""
    with path.open("rb") as file:
        for number, line in enumerate(iter(file.readline, b""), start=1):
            offset = file.tell() - len(line)
            if not line.endswith(b"\n"):
                return  # cut off: the writer of a resumed run drops it
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number}: not a JSON record ({error.msg}); "
                                 "a stream file of facemark predict holds one JSON object per line") from None
            if not isinstance(record, dict) or "type" not in record:
                raise ValueError(f"{path}: line {number}: expected a JSON object with a \"type\", got {line[:80]!r}")
            if number == 1:
                if record.get("type") != "header" or record.get("format") != STREAM_FORMAT:
                    raise ValueError(f"{path}: line 1: not a facemark predict stream file (no {STREAM_FORMAT} header)")
                continue
            yield offset, record


def read_header(path: Path) -> dict | None:
    """The header of a stream file (without format and version), None for an empty file."""
    with path.open("rb") as file:
        first = file.readline()
    if not first.endswith(b"\n"):
        return None
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or record.get("format") != STREAM_FORMAT:
        raise ValueError(f"{path}: line 1: not a facemark predict stream file (no {STREAM_FORMAT} header)")
    return {key: value for key, value in record.items() if key not in ("type", "format", "version")}


def check_header(path: Path, header: dict) -> None:
    """An error naming the first setting in which ``path``'s run differs from this one."""
    found = read_header(path)
    if found is None:
        return
    for key in header:
        if found.get(key) != header[key]:
            raise ValueError(f"{path} was written with {key} {found.get(key)!r}, this run has {header[key]!r}; "
                             "--resume continues a run with the same settings (give another --out for new ones)")


def finished_inputs(out: Path, header: dict) -> set[str]:
    """The inputs (``file`` fields) that have an image or video record in ``out``'s stream files;
    every file must have been written with the same ``header`` (the same model and settings)."""
    done: set[str] = set()
    for path in stream_files(out):
        check_header(path, header)
        done.update(record["file"] for _, record in read_stream(path) if record["type"] in FINISHED)
    return done


def _index(files: Iterable[Path]) -> dict[tuple[str, str], tuple[Path, int, str]]:
    """Where the record that counts for each input is: ``(section, file) -> (path, offset, type)``.

    Sections: "entry" (image, video or failed: a success wins over a failure, a later record
    over an earlier one of the same kind) and "skipped_link".
    """
    index: dict[tuple[str, str], tuple[Path, int, str]] = {}
    for path in files:
        for offset, record in read_stream(path):
            kind = record["type"]
            key = ("skipped_link" if kind == "skipped_link" else "entry", record["file"])
            known = index.get(key)
            if kind == "failed" and known is not None and known[2] in FINISHED:
                continue  # an input that failed once and succeeded later (--resume retries failures)
            index[key] = (path, offset, kind)
    return index


def _record_at(path: Path, offset: int) -> dict:
    with path.open("rb") as file:
        file.seek(offset)
        record = json.loads(file.readline())
    del record["type"]
    return record


def csv_columns(num_points: int) -> list[str]:
    columns = ["file", "frame", "face", "track", "box_source", "score", "box_x_min", "box_y_min", "box_x_max", "box_y_max"]
    return columns + [f"{axis}{i}" for i in range(num_points) for axis in ("x", "y")]


def _csv_rows(kind: str, record: dict) -> Iterator[list]:
    frames = [("", record["faces"])] if kind == "image" else [(frame["frame"], frame["faces"]) for frame in record["frames"]]
    for frame, faces in frames:
        for index, face in enumerate(faces):
            score = "" if face["score"] is None else face["score"]
            row = [record["file"], frame, index, face.get("track", ""), face["box_source"], score, *face["box"]]
            yield row + [value for point in face["landmarks"] for value in point]


def merge_streams(out: Path, header: dict, order: list[str], output_format: str, num_points: int) -> tuple[Path, dict]:
    """Write ``predictions.json`` (``output_format="json"``) or ``predictions.csv`` from every
    stream file in ``out``, one record at a time.

    ``order``: this run's inputs in their deterministic order (files only an earlier run into
    ``out`` processed follow, in the order of the stream files). The JSON file is the same text
    ``json.dumps(document, indent=1)`` gives for the whole document. Returns the path written and
    counts: images, faces, videos, frames, failed (their names), skipped_links, warnings
    (``(file, warning)`` of the videos that decoded only in part).
    """
    files = stream_files(out)
    for path in files:
        check_header(path, header)
    index = _index(files)
    rank = {name: position for position, name in enumerate(dict.fromkeys(order))}
    keys = sorted(index, key=lambda key: rank.get(key[1], len(rank)))  # stable: stream order after
    sections: dict[str, list[tuple[Path, int, str]]] = {"images": [], "videos": [], "failed": [], "skipped_links": []}
    counts = {"images": 0, "faces": 0, "videos": 0, "frames": 0, "failed": [], "skipped_links": 0, "warnings": []}
    for key in keys:
        path, offset, kind = index[key]
        section = {"image": "images", "video": "videos", "failed": "failed", "skipped_link": "skipped_links"}[kind]
        sections[section].append((path, offset, kind))
    target = out / f"predictions.{output_format}"
    partial = target.with_name(target.name + ".partial")  # never a half-written final file
    with partial.open("w", newline="" if output_format == "csv" else None, encoding="utf-8") as file:
        if output_format == "json":
            _write_json(file, header, sections, counts)
        else:
            writer = csv.writer(file)
            writer.writerow(csv_columns(num_points))
            for name in ("images", "videos", "failed", "skipped_links"):
                for path, offset, kind in sections[name]:
                    record = _record_at(path, offset)
                    _count(kind, record, counts)
                    if kind in FINISHED:
                        writer.writerows(_csv_rows(kind, record))
    partial.replace(target)
    return target, counts


def _count(kind: str, record: dict, counts: dict) -> None:
    if kind == "image":
        counts["images"] += 1
        counts["faces"] += len(record["faces"])
    elif kind == "video":
        counts["videos"] += 1
        counts["frames"] += len(record["frames"])
        if "warning" in record:
            counts["warnings"].append((record["file"], record["warning"]))
    elif kind == "failed":
        counts["failed"].append(record["file"])
    else:
        counts["skipped_links"] += 1


def _write_json(file: IO[str], header: dict, sections: dict, counts: dict) -> None:
    """``json.dumps({**header, images, videos, failed, skipped_links}, indent=1)``, written one
    record at a time (each list item sits two levels deep: its lines are indented by two)."""
    head = json.dumps(header, indent=1)
    file.write(head[:-2] + ",\n" if header else "{\n")
    names = list(sections)
    for number, name in enumerate(names):
        items = sections[name]
        closing = "," if number < len(names) - 1 else ""
        if not items:
            file.write(f' "{name}": []{closing}\n')
            continue
        file.write(f' "{name}": [\n')
        for position, (path, offset, kind) in enumerate(items):
            record = _record_at(path, offset)
            _count(kind, record, counts)
            text = json.dumps(record, indent=1).replace("\n", "\n  ")
            file.write("  " + text + ("," if position < len(items) - 1 else "") + "\n")
        file.write(f" ]{closing}\n")
    file.write("}")
