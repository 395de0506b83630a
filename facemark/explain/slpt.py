"""SLPT's explanatory figures (Xia et al., CVPR 2022), read from the model by forward hooks.

- Fig. 1: the local patches of every stage on the face (boxes from ``SLPT.patch_box_tap``);
- Fig. 2 (right): the adaptive inherent relation: each landmark joined to the landmark that gets
  its highest cross-attention weight in the first layer (final stage);
- Fig. 3: cosine similarity of the learned structure encodings P, and one landmark's row on the
  mean face;
- Fig. 5: mean MCA and MSA attention maps of the final stage, per layer;
- the NME_io of every stage and layer on a split (intermediate supervision at work).

Attention weights come from :class:`facemark.models.slpt.MultiheadAttention` with
``expose_weights`` on, through its ``weights_tap``; they are averaged over heads.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from facemark.explain.faces import ExplainedModel, Faces, cosine_similarity_matrix, nme_io
from facemark.explain.page import Page, draw_matrix, pyplot, show_face, subplots

__all__ = ["SLPTRecording", "record_slpt", "explain_slpt"]


@dataclass
class SLPTRecording:
    """What one forward pass over a batch exposed, as numpy arrays.

    ``mca`` / ``msa``: (B, stages, layers, N, N) attention weights averaged over heads (rows:
    landmark queries; None where the model has no such block); ``boxes``: (B, stages, N, 4) patch
    boxes (x_min, y_min, x_max, y_max) in normalised crop coordinates; ``stages``: (B, stages,
    layers, N, 2) every layer's prediction (the model's return value).
    """

    mca: np.ndarray | None
    msa: np.ndarray | None
    boxes: np.ndarray
    stages: np.ndarray


@contextmanager
def _hooks(model):
    """Register the taps' hooks; yields the dict they fill. Restores the model afterwards."""
    found = {"cross": [[] for _ in model.layers], "self": [[] for _ in model.layers], "boxes": []}
    handles, exposed = [], []

    def keep(store):
        def hook(module, inputs, output):
            store.append(output.detach().mean(dim=1).float().cpu())  # average over heads
        return hook

    for index, layer in enumerate(model.layers):
        for kind, attention in (("cross", layer.cross_attention), ("self", layer.self_attention)):
            if attention is not None:
                exposed.append((attention, attention.expose_weights))
                attention.expose_weights = True
                handles.append(attention.weights_tap.register_forward_hook(keep(found[kind][index])))

    def boxes(module, inputs, output):
        box_min, box_size = output
        found["boxes"].append(torch.cat((box_min, box_min + box_size), dim=-1).detach().float().cpu())

    handles.append(model.patch_box_tap.register_forward_hook(boxes))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
        for attention, before in exposed:
            attention.expose_weights = before


@torch.no_grad()
def record_slpt(model, images: torch.Tensor) -> SLPTRecording:
    """Run ``model`` (eval mode) on ``images`` and collect attention, patch boxes and predictions."""
    with _hooks(model) as found:
        output = model(images)

    def stack(kind):
        per_layer = found[kind]
        if not per_layer[0]:
            return None
        # per_layer[layer][stage] is (B, N, N) -> (B, stages, layers, N, N)
        return torch.stack([torch.stack(stages, dim=1) for stages in per_layer], dim=2).numpy()

    return SLPTRecording(
        mca=stack("cross"), msa=stack("self"),
        boxes=torch.stack(found["boxes"], dim=1).numpy(),
        stages=torch.stack([stage.float() for stage in output.stages], dim=1).cpu().numpy(),
    )


def _record_all(explained: ExplainedModel, faces: Faces, batch_size: int = 16) -> SLPTRecording:
    parts = []
    for start in range(0, len(faces.crops), batch_size):
        parts.append(record_slpt(explained.model, faces.tensors(explained.crop, faces.crops[start:start + batch_size])))

    def join(name):
        values = [getattr(part, name) for part in parts]
        return None if values[0] is None else np.concatenate(values)

    return SLPTRecording(join("mca"), join("msa"), join("boxes"), join("stages"))


def explain_slpt(explained: ExplainedModel, faces: Faces, page: Page, landmark: int | None = None,
                 faces_shown: int = 4) -> SLPTRecording:
    """Write every SLPT figure for ``faces`` into ``page``; returns the recording."""
    plt = pyplot()
    model, layout, size = explained.model, explained.layout, explained.crop.size
    config = model.config
    recording = _record_all(explained, faces)
    shown = min(faces_shown, len(faces.crops))
    last_stage = recording.stages.shape[1] - 1
    final = recording.stages[:, -1, -1]  # (B, N, 2)
    page.text(f"Model: {explained.description}: {config.num_stages} stages, {config.num_layers} layers, "
              f"{config.num_points} points, {config.patch_samples} x {config.patch_samples} samples per patch.",
              f"Faces: {faces.source}. Drawn: the first {shown}.")

    # Fig. 1: local patches per stage.
    colours = plt.get_cmap("autumn")(np.linspace(0, 0.8, recording.boxes.shape[1]))
    figure, axes = subplots(shown, recording.boxes.shape[1], figsize=(3 * recording.boxes.shape[1], 3 * shown),
                                squeeze=False)
    for face in range(shown):
        for stage in range(recording.boxes.shape[1]):
            ax = axes[face, stage]
            show_face(ax, faces.crops[face], f"{faces.label(face)}\nstage {stage + 1}: patch side "
                                              f"{2 * model.stage_half_sizes()[stage] * size:.1f} px")
            for x0, y0, x1, y1 in recording.boxes[face, stage] * size:
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=0.6,
                                           edgecolor=colours[stage]))
            prediction = recording.stages[face, stage, -1] * size
            ax.scatter(prediction[:, 0], prediction[:, 1], s=3, c="cyan", zorder=3)
    figure.suptitle("SLPT Fig. 1: the local patch of every landmark, per stage (cyan: the stage's prediction)",
                    fontsize=10)
    page.figure(figure, "slpt_fig1_patches", "Fig. 1: local patches of every stage",
                "Each landmark's patch (the box its K x K samples span) at every stage; the boxes shrink by half "
                "per stage and follow the previous stage's prediction. Boxes from the model's `patch_box_tap`.",
                {"slpt_fig1_boxes": recording.boxes * size})

    # Fig. 2 (right): the strongest first-layer cross-attention partner of every landmark.
    if recording.mca is not None:
        first_layer = recording.mca[:, last_stage, 0]  # (B, N, N)
        partner = first_layer.argmax(axis=-1)
        figure, axes = subplots(1, shown, figsize=(4 * shown, 4), squeeze=False)
        for face in range(shown):
            ax = axes[0, face]
            show_face(ax, faces.crops[face], faces.label(face))
            points = final[face] * size
            for i, j in enumerate(partner[face]):
                ax.plot(points[[i, j], 0], points[[i, j], 1], "-", color="yellow", linewidth=0.8, alpha=0.9)
            ax.scatter(points[:, 0], points[:, 1], s=6, c="red", zorder=3)
        figure.suptitle(f"SLPT Fig. 2 (right): each landmark joined to its highest cross-attention landmark "
                        f"(layer 1, stage {last_stage + 1})", fontsize=10)
        page.figure(figure, "slpt_fig2_relation", "Fig. 2 (right): adaptive inherent relation",
                    "A line joins each landmark to the landmark whose patch gets its largest MCA weight in the "
                    "first layer (final stage, mean over heads), drawn at the predicted landmarks: the relation "
                    "adapts to each face.",
                    {"slpt_fig2_first_layer_cross_attention": first_layer, "slpt_fig2_partner": partner})
    else:
        page.text("## Fig. 2 (right)", "", "This model has no cross-attention (MCA) block: no figure.")

    # Fig. 3: structure encoding similarity.
    if model.structure_encoding is not None:
        encodings = model.structure_encoding.detach().float().cpu().numpy()[0]
        similarity = cosine_similarity_matrix(encodings)
        chosen = layout.inter_ocular[0] if landmark is None else int(landmark)
        if not 0 <= chosen < config.num_points:
            raise ValueError(f"--landmark {chosen}: this model has landmarks 0..{config.num_points - 1}")
        mean_face = model.mean_face.detach().float().cpu().numpy()
        figure, axes = subplots(1, 2, figsize=(10, 4.4))
        draw_matrix(axes[0], figure, similarity, "cosine similarity of structure encodings P", "coolwarm", -1, 1,
                "cosine similarity")
        others = np.delete(np.arange(config.num_points), chosen)
        image = axes[1].scatter(mean_face[others, 0], mean_face[others, 1], c=similarity[chosen, others],
                                cmap="coolwarm", vmin=-1, vmax=1, s=30, edgecolors="k", linewidths=0.3)
        axes[1].scatter(*mean_face[chosen], marker="*", s=200, c="gold", edgecolors="k", zorder=3)
        axes[1].annotate(str(chosen), mean_face[chosen], textcoords="offset points", xytext=(6, 6), fontsize=8)
        axes[1].set_aspect("equal")
        axes[1].invert_yaxis()
        axes[1].set_xticks([])
        axes[1].set_yticks([])
        axes[1].set_title(f"similarity to landmark {chosen} (star) on the mean face", fontsize=9)
        figure.colorbar(image, ax=axes[1], fraction=0.046, pad=0.04).set_label("cosine similarity", fontsize=8)
        figure.suptitle("SLPT Fig. 3: the learned structure encodings", fontsize=10)
        page.figure(figure, "slpt_fig3_structure_encoding", "Fig. 3: structure encoding similarity",
                    f"Cosine similarity of the learned structure encodings P (N x N) and landmark {chosen}'s row "
                    "on the model's mean face (choose it with --landmark).",
                    {"slpt_fig3_similarity": similarity})
    else:
        page.text("## Fig. 3", "", "This model has no structure encoding: no figure.")

    # Fig. 5: mean attention maps of the final stage, per layer.
    kinds = [(name, values) for name, values in (("MCA", recording.mca), ("MSA", recording.msa))
             if values is not None]
    if kinds:
        layers = config.num_layers
        figure, axes = subplots(len(kinds), layers, figsize=(3.6 * layers, 3.3 * len(kinds)), squeeze=False)
        arrays = {}
        for row, (name, values) in enumerate(kinds):
            mean = values[:, last_stage].mean(axis=0)  # (layers, N, N)
            arrays[f"slpt_fig5_{name.lower()}_mean"] = mean
            for layer in range(layers):
                draw_matrix(axes[row, layer], figure, mean[layer], f"{name}, layer {layer + 1}", "magma", 0, None,
                        "attention weight")
        figure.suptitle(f"SLPT Fig. 5: mean attention maps of the final stage over {len(faces.crops)} face(s)",
                        fontsize=10)
        page.figure(figure, "slpt_fig5_attention", "Fig. 5: mean attention maps (final stage)",
                    "Row i is how landmark i's query spreads its weight over the landmarks' patches (MCA) or the "
                    "other landmarks' tokens (MSA), averaged over heads and faces; every row sums to 1.", arrays)

    # Per-stage, per-layer NME.
    if faces.targets is not None:
        errors = nme_io(recording.stages.transpose(1, 2, 0, 3, 4), faces.targets, layout)  # (stages, layers, B)
        mean = errors.mean(axis=-1) * 100
        figure, ax = subplots(figsize=(1.2 + 0.6 * mean.size, 3.2))
        positions = np.arange(mean.size)
        labels = [f"s{s + 1}.l{l + 1}" for s in range(mean.shape[0]) for l in range(mean.shape[1])]
        ax.plot(positions, mean.ravel(), "o-")
        for position, value in zip(positions, mean.ravel()):
            ax.annotate(f"{value:.2f}", (position, value), textcoords="offset points", xytext=(0, 5),
                        ha="center", fontsize=7)
        for stage in range(1, mean.shape[0]):
            ax.axvline(stage * mean.shape[1] - 0.5, color="grey", linewidth=0.5)
        ax.set_xticks(positions, labels, rotation=90 if mean.size > 12 else 0, fontsize=8)
        ax.set_xlabel("stage.layer")
        ax.set_ylabel("NME_io (%)")
        ax.set_title(f"NME_io of every stage and layer ({len(faces.crops)} faces)", fontsize=9)
        ax.grid(alpha=0.3)
        page.figure(figure, "slpt_stage_layer_nme", "NME of every stage and layer",
                    "Mean NME_io (inter-ocular, %) of the prediction after every stage and layer (the model's "
                    "intermediate outputs), on the faces above.", {"slpt_stage_layer_nme": mean})
    else:
        page.text("## NME of every stage and layer", "", "Needs ground truth: run with --data.")
    return recording
