"""SDFL's explanatory figures (Lin, Zhu et al., IEEE TIP 2021), read from the model.

- Fig. 4: the neighbourhood M (the model's ``neighbourhood`` buffer) as a matrix and as a graph on
  the mean face; for the dynamic head, each face's adjacency sigma(A) (the model's return value
  ``SDFLOutput.adjacency``) as a matrix and as edge widths on the face;
- Fig. 9: cosine similarity of the node features at the input of the graph relational layers and
  after their 2nd and 4th residual blocks (forward hooks on ``head.graph`` and its blocks);
- Fig. 2 (c, d): progressive occlusion: NME_io against the occluded fraction of the face, for the
  model and a second checkpoint (``--compare``), side by side.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from facemark.explain.faces import ExplainedModel, Faces, cosine_similarity_matrix, nme_io
from facemark.explain.page import Page, draw_matrix, pyplot, show_face, subplots

__all__ = ["SDFLRecording", "record_sdfl", "occlude", "occlusion_curve", "explain_sdfl", "OCCLUDED_FRACTIONS"]

OCCLUDED_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
OCCLUSION_GREY = 128


@dataclass
class SDFLRecording:
    """One forward pass: ``landmarks`` (B, N, 2) normalised; ``adjacency`` (B, N, N) dynamic
    adjacency or None; ``nodes``: name -> (B, N, F) node features (graph head only)."""

    landmarks: np.ndarray
    adjacency: np.ndarray | None
    nodes: dict


def _node_taps(head) -> dict:
    """Name -> module whose input ("input") or output (the blocks) are the node features of Fig. 9."""
    blocks = head.graph.blocks
    taps = {"input": head.graph}
    for number in (2, 4):
        if len(blocks) >= number:
            taps[f"block{number}"] = blocks[number - 1]
    return taps


@contextmanager
def _hooks(model):
    from facemark.models.sdfl import GraphHead

    found, handles = {}, []
    if isinstance(model.head, GraphHead):
        for name, module in _node_taps(model.head).items():
            if name == "input":
                def pre(module, inputs, name=name):
                    found[name] = inputs[0].detach().float().cpu()
                handles.append(module.register_forward_pre_hook(pre))
            else:
                def post(module, inputs, output, name=name):
                    found[name] = output.detach().float().cpu()
                handles.append(module.register_forward_hook(post))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def record_sdfl(model, images: torch.Tensor) -> SDFLRecording:
    with _hooks(model) as found:
        output = model(images)
    adjacency = None if output.adjacency is None else output.adjacency.detach().float().cpu().numpy()
    if adjacency is not None and adjacency.ndim == 2:  # the static variant: one matrix for all faces
        adjacency = np.broadcast_to(adjacency, (len(images),) + adjacency.shape).copy()
    return SDFLRecording(output.landmarks.detach().float().cpu().numpy(), adjacency,
                         {name: value.numpy() for name, value in found.items()})


def _record_all(explained: ExplainedModel, faces: Faces, batch_size: int = 32) -> SDFLRecording:
    parts = [record_sdfl(explained.model, faces.tensors(explained.crop, faces.crops[start:start + batch_size]))
             for start in range(0, len(faces.crops), batch_size)]
    adjacency = None if parts[0].adjacency is None else np.concatenate([p.adjacency for p in parts])
    return SDFLRecording(np.concatenate([p.landmarks for p in parts]), adjacency,
                         {name: np.concatenate([p.nodes[name] for p in parts]) for name in parts[0].nodes})


def occlude(crops: np.ndarray, face_boxes: np.ndarray, fraction: float) -> np.ndarray:
    """Grey out the bottom ``fraction`` of each face box (x_min, y_min, x_max, y_max in crop pixels):
    a block that grows up the face from the chin as ``fraction`` goes 0 -> 1."""
    occluded = crops.copy()
    if fraction <= 0:
        return occluded
    for image, (x_min, y_min, x_max, y_max) in zip(occluded, face_boxes):
        top = int(round(y_max - fraction * (y_max - y_min)))
        rows = slice(max(top, 0), max(int(round(y_max)) + 1, 0))
        columns = slice(max(int(round(x_min)), 0), max(int(round(x_max)) + 1, 0))
        image[rows, columns] = OCCLUSION_GREY
    return occluded


def occlusion_curve(explained: ExplainedModel, faces: Faces, fractions=OCCLUDED_FRACTIONS,
                    batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Mean NME_io per occluded fraction, (len(fractions),), and the predictions
    (len(fractions), B, N, 2) normalised. Needs ground truth (the face box is the landmarks' box)."""
    if faces.targets is None:
        raise ValueError("the occlusion experiment needs ground truth: run with --data")
    size = explained.crop.size
    points = faces.targets * size
    boxes = np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1)
    predictions = []
    with torch.no_grad():
        for fraction in fractions:
            occluded = occlude(faces.crops, boxes, fraction)
            outputs = [explained.model(faces.tensors(explained.crop, occluded[start:start + batch_size])).landmarks
                       for start in range(0, len(occluded), batch_size)]
            predictions.append(torch.cat(outputs).float().cpu().numpy())
    predictions = np.stack(predictions)
    return nme_io(predictions, faces.targets, explained.layout).mean(axis=1), predictions


def _edges_on_face(ax, points: np.ndarray, adjacency: np.ndarray, colour: str = "yellow") -> None:
    """Each directed edge i -> j (i != j) drawn with a width proportional to sigma(A)[i, j]."""
    rows, columns = np.nonzero(adjacency > 0)
    for i, j in zip(rows, columns):
        if i != j:
            ax.plot(points[[i, j], 0], points[[i, j], 1], "-", color=colour, alpha=0.8,
                    linewidth=0.2 + 4.0 * float(adjacency[i, j]))


def explain_sdfl(explained: ExplainedModel, faces: Faces, page: Page, compare: ExplainedModel | None = None,
                 faces_shown: int = 4) -> SDFLRecording:
    """Write every SDFL figure for ``faces`` into ``page``; returns the recording."""
    from facemark.models.sdfl import GraphHead, plot_neighbourhood

    plt = pyplot()
    model, layout, size = explained.model, explained.layout, explained.crop.size
    recording = _record_all(explained, faces)
    shown = min(faces_shown, len(faces.crops))
    config = model.config
    page.text(f"Model: {explained.description}: {config.get('head')} head"
              + (f", {config.get('adjacency')} adjacency" if config.get("head") == "graph" else "")
              + f", backbone {config.get('backbone')}, {layout.num_points} points.",
              f"Faces: {faces.source}. Drawn: the first {shown}.")

    # Fig. 4: the neighbourhood and the graph on the mean face.
    mean_face = (faces.targets if faces.targets is not None else recording.landmarks).mean(axis=0) * size
    mean_source = "mean ground truth" if faces.targets is not None else "the prediction"
    if model.neighbourhood is not None:
        neighbourhood = model.neighbourhood.cpu().numpy()
        figure, axes = subplots(1, 2, figsize=(10, 4.6))
        draw_matrix(axes[0], figure, neighbourhood.astype(float), f"neighbourhood M ({int(neighbourhood.sum())} non-zeros)",
                "Greys", 0, 1, "in M")
        plot_neighbourhood(neighbourhood, mean_face, ax=axes[1], layout=layout,
                           title=f"the graph on the mean face ({mean_source})")
        figure.suptitle("SDFL Fig. 4: the landmark graph", fontsize=10)
        page.figure(figure, "sdfl_fig4_neighbourhood", "Fig. 4: the neighbourhood",
                    "The binary neighbourhood M the graph layers use (the model's `neighbourhood` buffer, self "
                    "included) and its edges drawn on the mean face.", {"sdfl_fig4_neighbourhood": neighbourhood})
    else:
        page.text("## Fig. 4", "", "This model has no neighbourhood (an FC head without the relative loss).")

    if recording.adjacency is not None:
        figure, axes = subplots(2, shown, figsize=(4.2 * shown, 8.4), squeeze=False)
        for face in range(shown):
            adjacency = recording.adjacency[face]
            shown_matrix = np.where(adjacency > 0, adjacency, np.nan)
            draw_matrix(axes[0, face], figure, shown_matrix, f"{faces.label(face)}: sigma(A)", "viridis", 0, None,
                    "edge weight")
            show_face(axes[1, face], faces.crops[face], "edge width = weight")
            points = recording.landmarks[face] * size
            _edges_on_face(axes[1, face], points, adjacency)
            axes[1, face].scatter(points[:, 0], points[:, 1], s=5, c="red", zorder=3)
        figure.suptitle(f"SDFL Fig. 4 (dynamic): each face's adjacency ({config.get('adjacency')} head)", fontsize=10)
        page.figure(figure, "sdfl_fig4_adjacency", "Fig. 4: per-face adjacency",
                    "The row-normalised adjacency sigma(A) of each face (the model's returned `adjacency`; rows sum "
                    "to 1 over the neighbourhood, blank outside it) and its edges on the face, drawn at the "
                    "predicted landmarks with widths proportional to the weights.",
                    {"sdfl_fig4_adjacency": recording.adjacency})

    # Fig. 9: node feature similarity through the graph layers.
    if isinstance(model.head, GraphHead) and recording.nodes:
        names = list(recording.nodes)
        titles = {"input": "node embedding (graph input)", "block2": "after block 2", "block4": "after block 4"}
        similarities = {name: cosine_similarity_matrix(recording.nodes[name]) for name in names}  # (B, N, N)
        figure, axes = subplots(1, 2 + len(names), figsize=(4.2 * (2 + len(names)), 4.2))
        show_face(axes[0], faces.crops[0], faces.label(0))
        adjacency = (recording.adjacency[0] if recording.adjacency is not None
                     else model.neighbourhood.float().cpu().numpy())
        draw_matrix(axes[1], figure, np.where(adjacency > 0, adjacency, np.nan), "adjacency", "viridis", 0, None,
                "edge weight")
        for ax, name in zip(axes[2:], names):
            draw_matrix(ax, figure, similarities[name][0], titles[name], "coolwarm", -1, 1, "cosine similarity")
        figure.suptitle("SDFL Fig. 9: cosine similarity of the node features through the graph layers", fontsize=10)
        page.figure(figure, "sdfl_fig9_node_similarity", "Fig. 9: node feature similarity",
                    "For the first face: the input, its adjacency, and the cosine similarity of the node features "
                    "at the input of the graph relational layers and after their 2nd and 4th residual blocks "
                    "(forward hooks). The paper's reading: connected nodes grow more similar.",
                    {f"sdfl_fig9_similarity_{name}": similarities[name] for name in names})

    # Fig. 2 (c, d): progressive occlusion.
    if faces.targets is not None:
        models = [explained] + ([compare] if compare is not None else [])
        curves, predictions = [], []
        for candidate in models:
            curve, prediction = occlusion_curve(candidate, faces)
            curves.append(curve)
            predictions.append(prediction)
        fractions = np.asarray(OCCLUDED_FRACTIONS)
        picks = [0, len(fractions) // 2, len(fractions) - 1]
        figure = plt.figure(layout="constrained", figsize=(4 + 2.6 * len(picks), 2.9 * len(models)))
        grid = figure.add_gridspec(len(models), 1 + len(picks), width_ratios=[1.6] + [1] * len(picks))
        curve_ax = figure.add_subplot(grid[:, 0])
        for candidate, curve in zip(models, curves):
            curve_ax.plot(fractions * 100, curve * 100, "o-", label=candidate.description)
        curve_ax.set_xlabel("occluded fraction of the face (%)")
        curve_ax.set_ylabel("NME_io (%)")
        curve_ax.set_title(f"progressive occlusion ({len(faces.crops)} faces)", fontsize=9)
        curve_ax.legend(fontsize=7)
        curve_ax.grid(alpha=0.3)
        box_points = faces.targets[0] * size
        box = np.concatenate([box_points.min(axis=0), box_points.max(axis=0)])[None]
        for row, (candidate, prediction) in enumerate(zip(models, predictions)):
            for column, pick in enumerate(picks):
                ax = figure.add_subplot(grid[row, 1 + column])
                show_face(ax, occlude(faces.crops[:1], box, fractions[pick])[0],
                           f"{candidate.description[:28]}\n{fractions[pick] * 100:.0f} % occluded")
                ax.scatter(*(faces.targets[0] * size).T, s=4, c="lime")
                ax.scatter(*(prediction[pick, 0] * size).T, s=4, c="red")
        figure.suptitle("SDFL Fig. 2 (c, d): NME under a growing occlusion (green: ground truth, red: prediction)",
                        fontsize=10)
        page.figure(figure, "sdfl_fig2_occlusion", "Fig. 2 (c, d): progressive occlusion",
                    "A grey block grows up each face from the chin (the bottom fraction of the ground-truth "
                    "landmark box); the curve is the mean NME_io (%) at each fraction"
                    + (", for this model and the --compare checkpoint" if compare is not None else "")
                    + ". Rows: " + "; ".join(f"{m.description}: " + ", ".join(f"{c * 100:.2f}" for c in curve)
                                              for m, curve in zip(models, curves)) + ".",
                    {"sdfl_fig2_fractions": fractions, "sdfl_fig2_nme": np.stack(curves)})
    else:
        page.text("## Fig. 2 (c, d): progressive occlusion", "", "Needs ground truth: run with --data.")
    return recording
