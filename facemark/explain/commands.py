"""``facemark explain``: argument declarations (nothing heavy imported) and the run."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from facemark.errors import CommandError

__all__ = ["add_explain_arguments", "explain"]


def add_explain_arguments(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.add_argument("checkpoint", type=Path, help="an SLPT or SDFL checkpoint (facemark's .pt, or an authors' SLPT .pth)")
    parser.add_argument("--image", type=Path, help="explain one face of this image")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X_MIN", "Y_MIN", "X_MAX", "Y_MAX"),
                        help="the face's box in the model's box source (default: the detector's first face)")
    parser.add_argument("--data", type=Path, metavar="ROOT", help="explain a benchmark split under ROOT (with --dataset, --split)")
    parser.add_argument("--dataset", help="wflw, 300w, cofw or cofw68 (with --data)")
    parser.add_argument("--split", help="the split, e.g. test (with --data)")
    parser.add_argument("--limit", type=int, default=None, help="use the first LIMIT faces of the split (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs, .npy tensors and explain.md (created)")
    parser.add_argument("--landmark", type=int, default=None,
                        help="SLPT Fig. 3: the landmark whose structure-encoding similarity is drawn (default: the first inter-ocular point)")
    parser.add_argument("--faces", type=int, default=4, help="faces drawn in the per-face figures (default: 4)")
    parser.add_argument("--compare", type=Path, metavar="CHECKPOINT2",
                        help="SDFL Fig. 2 (c, d): a second checkpoint (e.g. an FC head) in the occlusion experiment")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")

    def run(args: argparse.Namespace) -> int:
        if (args.image is None) == (args.data is None):
            raise CommandError("give either --image FILE (one face) or --data ROOT --dataset D --split S (a split)")
        if args.data is not None and not (args.dataset and args.split):
            raise CommandError("--data needs --dataset and --split")
        if args.image is None and args.box is not None:
            raise CommandError("--box goes with --image")
        if args.faces < 1 or (args.limit is not None and args.limit < 1):
            raise CommandError("--faces and --limit must be >= 1")
        try:
            page = explain(args.checkpoint, args.out, image=args.image, box=args.box, data=args.data,
                           dataset=args.dataset, split=args.split, limit=args.limit, landmark=args.landmark,
                           faces_shown=args.faces, compare=args.compare, threads=args.threads)
        except (ValueError, FileNotFoundError) as error:
            raise CommandError(str(error)) from None
        print(f"wrote {page} and {len(list(page.parent.glob('*.png')))} figures in {page.parent}")
        return 0

    return run


def explain(checkpoint, out_dir, image=None, box=None, data=None, dataset=None, split=None, limit=None,
            landmark=None, faces_shown: int = 4, compare=None, threads: int | None = None) -> Path:
    """Write the figures of ``checkpoint`` for one image's face or a split; returns the page's path."""
    import torch

    from facemark.explain.faces import faces_from_image, faces_from_split, load_explained_model, model_kind
    from facemark.explain.page import Page

    if threads is not None:
        torch.set_num_threads(threads)
    explained = load_explained_model(checkpoint)
    kind = model_kind(explained.model)
    if image is not None:
        faces = faces_from_image(explained, image, box)
    else:
        faces = faces_from_split(explained, data, dataset, split, limit)
    command = f"facemark explain {checkpoint} " + (f"--image {image}" if image is not None else
                                                    f"--data {data} --dataset {dataset} --split {split}")
    page = Page(out_dir, f"{kind.upper()} explained: {explained.description}")
    page.text(f"Made by `{command} ...`; every figure's tensors are saved beside it as `.npy`.")
    if kind == "slpt":
        from facemark.explain.slpt import explain_slpt

        if compare is not None:
            raise ValueError("--compare is for SDFL's occlusion experiment (Fig. 2 c, d)")
        explain_slpt(explained, faces, page, landmark=landmark, faces_shown=faces_shown)
    else:
        from facemark.explain.sdfl import explain_sdfl

        other = load_explained_model(compare) if compare is not None else None
        if other is not None and other.layout.num_points != explained.layout.num_points:
            raise ValueError(f"--compare {compare} predicts {other.layout.num_points} points, {checkpoint} "
                             f"{explained.layout.num_points}")
        explain_sdfl(explained, faces, page, compare=other, faces_shown=faces_shown)
    return page.write()
