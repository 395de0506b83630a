"""SDFL: structure-coherent deep feature learning (Lin, Zhu et al., IEEE TIP 2021).

A convolutional backbone gives an 8 x 8 feature map (for a 256 x 256 crop); the *landmark-graph
relational network* turns it into landmark coordinates:

1. **Node embedding** (Sec. III-A): two conv-BN-ReLU blocks map the C-channel map to ``n * N``
   channels (n = 4), reshaped to N node features of size ``n * H * W`` (256 for an 8 x 8 map).
2. **Neighbourhood** (Sec. III-B, eq. 1-2): a binary (N, N) matrix ``M`` built once from the
   training shapes (top k+1 Pearson correlations per row, self included), or the release's
   shipped graph (:func:`release_neighbourhood`: WFLW top-3 lists, hand-made 68 / 29 points). It
   is a buffer of the model (saved in its ``state_dict``), never re-derived at load time.
3. **Dynamic adjacency** (Sec. III-B): global average pooling + two FC layers give one weight per
   non-zero of ``M`` per image; ``sigma`` is a row-wise softmax over the neighbourhood (eq. 4).
4. **Graph relational layers** (eq. 3-5, Fig. 5): graph conv-BN-ReLU, 4 graph residual blocks
   (hidden size 128), and a graph conv to 2 coordinates per node.

Variants (``adjacency=``): ``"dynamic"`` (the paper), ``"static"`` (Table VI's ablation: every edge
weighs the same, i.e. a uniform average over the neighbourhood) and ``"release"`` (the authors'
released head: separate self / neighbour weights W0 / W1 and a static learned edge weight vector per
layer; ``shared/facts/sdfl.md``). The FC baseline head of Table I is :class:`FCHead`.

Heads predict in pixels of the ``input_size`` crop (as the paper and release do); the model divides
by ``input_size`` so ``SDFLOutput.landmarks`` is in normalised crop coordinates (facemark's model
contract). :func:`sdfl_loss` scales back to crop pixels for Soft Wing (eq. 9-10).

    >>> shapes = train_set.landmarks()                           # (n, 98, 2)
    >>> neighbourhood = build_neighbourhood(shapes, k=3)         # (98, 98) bool
    >>> model = sdfl_graph_model(98, neighbourhood, backbone="resnet34")
    >>> out = model(images)                                      # out.landmarks: (B, 98, 2) in [0, 1]
    >>> loss = sdfl_loss(out, targets, crop_size=256, neighbourhood=model.neighbourhood)
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facemark.data.balancing import shapes_in_box_frame
from facemark.models.losses import relative_location_loss, soft_wing_loss, uniform_laplacian

__all__ = [
    # neighbourhood
    "landmark_correlation", "build_neighbourhood", "read_neighbour_lists", "write_neighbour_lists",
    "neighbourhood_from_lists", "neighbour_lists", "RELEASE_GRAPHS", "release_neighbourhood",
    "release_wflw98_neighbourhood", "plot_neighbourhood",
    "export_neighbourhood",
    # modules
    "NodeEmbedding", "DynamicAdjacency", "GraphConv", "ReleaseGraphConv", "GraphConvBNReLU",
    "GraphResidualBlock", "GraphRelationalLayers", "GraphHead", "FCHead",
    "LastFeatureMap", "HRNetBranchesFeatureMap", "BACKBONES", "build_backbone", "timm_feature_map",
    "SDFLOutput", "SDFLModel", "sdfl_graph_model", "sdfl_fc_model", "sdfl_model_from_config",
    "sdfl_model_from_state_dict",
    # losses and accounting
    "sdfl_loss_terms", "sdfl_loss", "graph_layers_flops", "parameter_counts",
]

ADJACENCY_VARIANTS = ("dynamic", "static", "release")


# =============================================================================================
# Neighbourhood construction (Sec. III-B, eq. 1-2)
# =============================================================================================

def _shapes_in_centroid_frame(shapes: np.ndarray) -> np.ndarray:
    """Remove each shape's translation (centroid) and size (RMS distance to the centroid)."""
    centred = shapes - shapes.mean(axis=1, keepdims=True)
    size = np.sqrt((centred ** 2).sum(axis=2).mean(axis=1))[:, None, None]
    if np.any(size <= 0):
        raise ValueError(f"landmark_correlation: shapes {np.flatnonzero(size.ravel() <= 0)[:10].tolist()} have all "
                         "points at one position")
    return centred / size


def landmark_correlation(shapes: np.ndarray, frame: str = "centroid") -> np.ndarray:
    """The (N, N) landmark correlation matrix ``C = (|C_x| + |C_y|) / 2`` of eq. 1.

    ``C_x`` (``C_y``) is the Pearson correlation between the x (y) coordinates of every pair of
    points over the ``n`` shapes. Where a face sits in its image, and how big it is, would make every
    point correlate with every other, so shapes are first brought to a common frame:

    - ``"centroid"`` (default): each shape minus its centroid, divided by its RMS distance to it;
    - ``"box"``: centred on the landmark box and divided by its larger side (the frame of SDFL's
      square crops, :func:`~facemark.data.balancing.shapes_in_box_frame`); note that a point that
      always defines the box's larger side then has a constant coordinate;
    - ``"as_given"``: unchanged (shapes already in a common frame, e.g. crop pixels).

    A coordinate that never varies has no defined correlation: it gets 0 with every other point
    (and 1 with itself), with a warning naming the points.
    """
    frames = ("centroid", "box", "as_given")
    if frame not in frames:
        raise ValueError(f"landmark_correlation: frame must be one of {frames}, got {frame!r}")
    shapes = np.asarray(shapes, dtype=np.float64)
    if shapes.ndim != 3 or shapes.shape[2] != 2:
        raise ValueError(f"landmark_correlation: shapes must be an (n, N, 2) array, got shape {shapes.shape}")
    if shapes.shape[0] < 3:
        raise ValueError(f"landmark_correlation: need at least 3 shapes for correlations, got {shapes.shape[0]}")
    if not np.all(np.isfinite(shapes)):
        bad = sorted(set(np.argwhere(~np.isfinite(shapes))[:, 0].tolist()))
        raise ValueError(f"landmark_correlation: shapes {bad[:10]} contain non-finite values")
    if frame == "box":
        shapes = shapes_in_box_frame(shapes)
    elif frame == "centroid":
        shapes = _shapes_in_centroid_frame(shapes)
    per_axis = []
    for axis, axis_name in ((0, "x"), (1, "y")):
        values = shapes[:, :, axis]
        centred = values - values.mean(axis=0)
        norms = np.sqrt((centred ** 2).sum(axis=0))
        constant = norms <= 1e-12 * max(1.0, float(np.abs(values).max()))
        if constant.any():
            warnings.warn(f"landmark_correlation: the {axis_name} coordinate of points "
                          f"{np.flatnonzero(constant).tolist()} never varies; their {axis_name} correlations are set to 0",
                          stacklevel=2)
        safe_norms = np.where(constant, 1.0, norms)
        correlation = (centred.T @ centred) / np.outer(safe_norms, safe_norms)
        correlation[constant, :] = 0.0
        correlation[:, constant] = 0.0
        np.fill_diagonal(correlation, 1.0)
        per_axis.append(np.abs(np.clip(correlation, -1.0, 1.0)))
    return 0.5 * (per_axis[0] + per_axis[1])


def build_neighbourhood(shapes: np.ndarray, k: int = 3, frame: str = "centroid") -> np.ndarray:
    """Binary neighbourhood ``M`` of eq. 2: per row, the top ``k + 1`` of eq. 1's correlations.

    Self is always one of the ``k + 1`` (its correlation, 1, is the maximum; ties with a point
    that moves exactly like it are broken in favour of self), so each row has exactly ``k + 1``
    ones: self and the ``k`` most correlated other points (ties broken by lower index). ``M`` is
    not symmetric in general (as in eq. 2). Returns an (N, N) bool array.
    """
    correlation = landmark_correlation(shapes, frame=frame)
    num_points = correlation.shape[0]
    if not 1 <= k <= num_points - 1:
        raise ValueError(f"build_neighbourhood: k must be in 1..{num_points - 1} for {num_points} points, got {k}")
    ranked = correlation.copy()
    np.fill_diagonal(ranked, np.inf)
    order = np.argsort(-ranked, axis=1, kind="stable")[:, : k + 1]
    neighbourhood = np.zeros((num_points, num_points), dtype=bool)
    neighbourhood[np.arange(num_points)[:, None], order] = True
    return neighbourhood


def read_neighbour_lists(path: str | Path) -> list[list[int]]:
    """Read ``"i: j1 j2 j3"`` lines (``#`` comments allowed; nodes 0..N-1 in order) as lists."""
    path = Path(path)
    lists: list[list[int]] = []
    for line_number, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        node, sep, rest = line.partition(":")
        try:
            node_index = int(node)
            neighbours = [int(token) for token in rest.split()]
        except ValueError:
            raise ValueError(f"{path}:{line_number}: expected 'node: neighbour neighbour ...' with integers, "
                             f"got {raw!r}") from None
        if not sep or node_index != len(lists):
            raise ValueError(f"{path}:{line_number}: expected node {len(lists)} followed by ':', got {raw!r}")
        lists.append(neighbours)
    for node_index, neighbours in enumerate(lists):
        bad = [j for j in neighbours if not 0 <= j < len(lists)]
        if bad:
            raise ValueError(f"{path}: node {node_index} lists neighbours {bad} outside 0..{len(lists) - 1}")
    if not lists:
        raise ValueError(f"{path}: no neighbour lists found")
    return lists


def neighbour_lists(neighbourhood: np.ndarray, correlation: np.ndarray | None = None) -> list[list[int]]:
    """Each row's neighbours other than self (most correlated first when ``correlation`` is given)."""
    neighbourhood = np.asarray(neighbourhood, dtype=bool)
    lists = []
    for i, row in enumerate(neighbourhood):
        others = [j for j in np.flatnonzero(row).tolist() if j != i]
        if correlation is not None:
            others.sort(key=lambda j: (-correlation[i, j], j))
        lists.append(others)
    return lists


def write_neighbour_lists(neighbourhood: np.ndarray, path: str | Path, correlation: np.ndarray | None = None,
                          comment: str = "") -> None:
    """Write a neighbourhood as ``"i: j1 j2 ..."`` lines (self excluded), readable by :func:`read_neighbour_lists`."""
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    lines += [f"{i}: {' '.join(map(str, others))}" for i, others in enumerate(neighbour_lists(neighbourhood, correlation))]
    Path(path).write_text("\n".join(lines) + "\n")


def neighbourhood_from_lists(lists: Sequence[Sequence[int]], symmetric: bool = True, self_loops: bool = True) -> np.ndarray:
    """Binary (N, N) matrix from per-node neighbour lists (row i has ones at ``lists[i]``).

    ``symmetric=True`` takes the union of directed edges and ``self_loops=True`` sets the diagonal,
    as the SDFL release does with its shipped lists.
    """
    num_points = len(lists)
    neighbourhood = np.zeros((num_points, num_points), dtype=bool)
    for i, neighbours in enumerate(lists):
        for j in neighbours:
            if not 0 <= int(j) < num_points:
                raise ValueError(f"neighbourhood_from_lists: node {i} has neighbour {j} outside 0..{num_points - 1}")
            neighbourhood[i, int(j)] = True
    if symmetric:
        neighbourhood |= neighbourhood.T
    if self_loops:
        np.fill_diagonal(neighbourhood, True)
    return neighbourhood


# Layout name -> the SDFL release's graph for it, shipped in facemark/resources as neighbour lists.
# The release picks its graph by the number of points (utils/graph_utils.py adj_matrix_from_num_points):
# WFLW's precomputed top-3 lists (its configs set top_k: 3), hand-made graphs for 68 and 29 points.
RELEASE_GRAPHS = {
    "wflw98": "sdfl_wflw98_top3_neighbours.txt",
    "300w68": "sdfl_300w68_graph.txt",
    "cofw29": "sdfl_cofw29_graph.txt",
}


def release_neighbourhood(layout_name: str, symmetric: bool = True, self_loops: bool = True) -> np.ndarray:
    """The SDFL release's landmark graph for ``layout_name`` (a key of :data:`RELEASE_GRAPHS`).

    Default: symmetrised (union of both directions) + self-loops, the non-zero pattern of the
    release's row-normalised adjacency (its graph layers use only that pattern: a softmax of
    learned edge weights over the non-zeros). WFLW: 470 non-zeros; 300W (68 points, 99 edges):
    266; COFW (29 points, 52 edges): 133. ``symmetric=False, self_loops=False`` gives the edges as
    the release's files list them (WFLW: the directed top-3 graph its Laplacian loss uses).
    """
    if layout_name not in RELEASE_GRAPHS:
        raise ValueError(f"the SDFL release has graphs for layouts {sorted(RELEASE_GRAPHS)}, not {layout_name!r}; "
                         "use model.options.graph=computed (built from the training shapes)")
    with resources.as_file(resources.files("facemark.resources") / RELEASE_GRAPHS[layout_name]) as path:
        lists = read_neighbour_lists(path)
    return neighbourhood_from_lists(lists, symmetric=symmetric, self_loops=self_loops)


def release_wflw98_neighbourhood(symmetric: bool = True, self_loops: bool = True) -> np.ndarray:
    """The WFLW k = 3 graph shipped with the SDFL release (``facemark/resources/sdfl_wflw98_top3_neighbours.txt``).

    Default: symmetrised + self-loops, as the release's graph layers use it (470 non-zeros, 4 to 8
    per row). ``symmetric=False`` gives the directed top-3 graph the release's Laplacian loss uses.
    """
    return release_neighbourhood("wflw98", symmetric=symmetric, self_loops=self_loops)


def plot_neighbourhood(neighbourhood: np.ndarray, mean_shape: np.ndarray, ax=None, layout=None, title: str | None = None):
    """Draw the graph like the paper's Fig. 4: a line between every pair of neighbours over ``mean_shape``.

    ``neighbourhood`` (N, N) binary (direction ignored, self-loops not drawn); ``mean_shape`` (N, 2)
    in image-like coordinates (y down). Points are coloured by face part when ``layout`` is given.
    Returns the matplotlib axes (a new figure when ``ax`` is None).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    neighbourhood = np.asarray(neighbourhood, dtype=bool)
    mean_shape = np.asarray(mean_shape, dtype=np.float64)
    if mean_shape.shape != (neighbourhood.shape[0], 2) or neighbourhood.shape[0] != neighbourhood.shape[1]:
        raise ValueError(f"plot_neighbourhood: neighbourhood {neighbourhood.shape} and mean_shape {mean_shape.shape} "
                         "must be (N, N) and (N, 2)")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    undirected = np.triu(neighbourhood | neighbourhood.T, k=1)
    for i, j in zip(*np.nonzero(undirected)):
        ax.plot(mean_shape[[i, j], 0], mean_shape[[i, j], 1], "-", color="tab:blue", linewidth=0.8, alpha=0.8)
    colours = np.full(len(mean_shape), "tab:red", dtype=object)
    if layout is not None:
        palette = plt.get_cmap("tab10")
        for group_index, indices in enumerate(layout.groups.values()):
            colours[list(indices)] = [palette(group_index % 10)] * len(indices)
    ax.scatter(mean_shape[:, 0], mean_shape[:, 1], s=10, c=list(colours), zorder=3)
    ax.set_aspect("equal")
    if not ax.yaxis_inverted():
        ax.invert_yaxis()
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def export_neighbourhood(shapes: np.ndarray, k: int, out_path: str | Path, frame: str = "centroid",
                         plot_path: str | Path | None = None, layout=None) -> np.ndarray:
    """Build eq. 2's neighbourhood from ``shapes`` (n, N, 2), write it as neighbour lists (most
    correlated first) and optionally a Fig.-4-like plot over the mean shape; returns the (N, N) matrix.

    This is what a ``facemark sdfl-graph`` command runs on a training split's landmarks.
    """
    correlation = landmark_correlation(shapes, frame=frame)
    neighbourhood = build_neighbourhood(shapes, k=k, frame=frame)
    write_neighbour_lists(neighbourhood, out_path, correlation,
                          comment=f"SDFL neighbourhood (eq. 1-2): self + top {k} by (|corr x| + |corr y|) / 2, "
                                  f"{len(shapes)} shapes, frame={frame}; most correlated first, self excluded")
    if plot_path is not None:
        import matplotlib.pyplot as plt

        framed = {"centroid": _shapes_in_centroid_frame, "box": shapes_in_box_frame}.get(frame, np.asarray)(
            np.asarray(shapes, dtype=np.float64))
        ax = plot_neighbourhood(neighbourhood, framed.mean(axis=0), layout=layout,
                                title=f"k = {k}: {int(neighbourhood.sum())} non-zeros")
        ax.figure.savefig(plot_path, dpi=110, bbox_inches="tight")
        plt.close(ax.figure)
    return neighbourhood


def _check_neighbourhood(neighbourhood: torch.Tensor | np.ndarray, num_points: int, where: str) -> torch.Tensor:
    neighbourhood = torch.as_tensor(np.asarray(neighbourhood) if not isinstance(neighbourhood, torch.Tensor) else neighbourhood)
    if neighbourhood.shape != (num_points, num_points):
        raise ValueError(f"{where}: neighbourhood must be ({num_points}, {num_points}) for {num_points} points, "
                         f"got {tuple(neighbourhood.shape)}")
    neighbourhood = neighbourhood.detach().cpu() != 0
    if not bool(neighbourhood.diagonal().all()):
        missing = torch.nonzero(~neighbourhood.diagonal()).flatten().tolist()
        raise ValueError(f"{where}: the neighbourhood must include self (eq. 2); diagonal is 0 at points {missing[:10]}")
    return neighbourhood


def _scatter_edge_logits(values: torch.Tensor, edge_rows: torch.Tensor, edge_cols: torch.Tensor, num_points: int) -> torch.Tensor:
    """(..., E) edge values -> (..., N, N) with the values at the edges and -inf elsewhere."""
    # A scatter into the flattened N x N matrix: ONNX exports it as ScatterElements (the
    # advanced-indexing assignment ``logits[..., rows, cols] = values`` exports to an invalid graph).
    leading = values.shape[:-1]
    flat_index = (edge_rows * num_points + edge_cols).expand(leading + edge_rows.shape)
    logits = values.new_full(leading + (num_points * num_points,), float("-inf"))
    return logits.scatter(-1, flat_index, values).reshape(leading + (num_points, num_points))


# =============================================================================================
# Node embedding (Sec. III-A)
# =============================================================================================

class NodeEmbedding(nn.Module):
    """Map a (B, C, H, W) feature map to N node features: two conv3x3-BN-ReLU, then a reshape.

    Channels ``n*i .. n*i + n - 1`` of the ``n * N``-channel map, each H x W map flattened row-major,
    form node ``i``'s ``n * H * W`` features (as the release's ``view``).
    """

    def __init__(self, in_channels: int, num_points: int, expansion: int = 4, hidden_channels: int = 256,
                 bn_momentum: float = 0.1):
        super().__init__()
        self.num_points = num_points
        self.expansion = expansion
        self.conv_hidden = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            nn.BatchNorm2d(hidden_channels, momentum=bn_momentum),
            nn.ReLU(inplace=True),
        )
        self.conv_nodes = nn.Sequential(
            nn.Conv2d(hidden_channels, expansion * num_points, 3, padding=1),
            nn.BatchNorm2d(expansion * num_points, momentum=bn_momentum),
            nn.ReLU(inplace=True),
        )

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(node_features (B, N, n*H*W), node_maps (B, n*N, H, W))``."""
        node_maps = self.conv_nodes(self.conv_hidden(feature_map))
        batch = node_maps.shape[0]
        return node_maps.reshape(batch, self.num_points, -1), node_maps


# =============================================================================================
# Adjacency (Sec. III-B) and graph convolutions (eq. 3-5)
# =============================================================================================

class DynamicAdjacency(nn.Module):
    """Per-image edge weights of the neighbourhood, row-softmax normalised (Sec. III-B, eq. 4).

    Global average pooling of the node embedding's maps, FC -> ReLU -> FC gives one logit per
    non-zero of ``M``; ``sigma(A)`` is the softmax of each row over its neighbourhood (rows sum to
    1, zero outside ``M``). The last FC starts at zero, so training starts from the uniform
    (static) adjacency rather than from random edge weights.
    """

    def __init__(self, in_features: int, neighbourhood: torch.Tensor, hidden_features: int = 256):
        super().__init__()
        self.num_points = neighbourhood.shape[0]
        edge_rows, edge_cols = torch.nonzero(neighbourhood, as_tuple=True)
        self.register_buffer("edge_rows", edge_rows, persistent=False)
        self.register_buffer("edge_cols", edge_cols, persistent=False)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, len(edge_rows))
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def set_edges(self, edge_rows: torch.Tensor, edge_cols: torch.Tensor) -> None:
        self.edge_rows.copy_(edge_rows)
        self.edge_cols.copy_(edge_cols)

    def forward(self, node_maps: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) maps -> (B, N, N) normalised adjacency ``sigma(A)``."""
        pooled = node_maps.mean(dim=(2, 3))
        edge_logits = self.fc2(F.relu(self.fc1(pooled)))
        logits = _scatter_edge_logits(edge_logits, self.edge_rows, self.edge_cols, self.num_points)
        return torch.softmax(logits, dim=-1)


class GraphConv(nn.Module):
    """Graph convolution of eq. 4 without its BN-ReLU: ``sigma(A) H W + b``.

    ``adjacency`` is the already normalised ``sigma(A)``, (N, N) or (B, N, N). ``H W`` is computed
    first (cheaper than ``(A H) W`` when the output is narrower than the input).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return torch.matmul(adjacency, torch.matmul(x, self.weight)) + self.bias


class ReleaseGraphConv(nn.Module):
    """The released "semantic graph conv": ``diag(A) X W0 + offdiag(A) X W1 + b``.

    ``A`` is the row softmax of a learned static edge-weight vector ``e`` (one per non-zero of
    ``M``, initialised to 1, so ``A`` starts uniform) placed in the neighbourhood; W0 acts on the node
    itself and W1 on its neighbours. Ignores any external adjacency.
    """

    def __init__(self, in_features: int, out_features: int, neighbourhood: torch.Tensor):
        super().__init__()
        self.num_points = neighbourhood.shape[0]
        edge_rows, edge_cols = torch.nonzero(neighbourhood, as_tuple=True)
        self.register_buffer("edge_rows", edge_rows, persistent=False)
        self.register_buffer("edge_cols", edge_cols, persistent=False)
        self.weight = nn.Parameter(torch.empty(2, in_features, out_features))  # [W0 (self), W1 (neighbours)]
        self.edge_weight = nn.Parameter(torch.ones(len(edge_rows)))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.xavier_uniform_(self.weight[0])
        nn.init.xavier_uniform_(self.weight[1])

    def set_edges(self, edge_rows: torch.Tensor, edge_cols: torch.Tensor) -> None:
        self.edge_rows.copy_(edge_rows)
        self.edge_cols.copy_(edge_cols)

    def adjacency(self) -> torch.Tensor:
        logits = _scatter_edge_logits(self.edge_weight, self.edge_rows, self.edge_cols, self.num_points)
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor | None = None) -> torch.Tensor:
        normalised = self.adjacency()
        # Split A into its diagonal and the rest with an identity mask (ONNX has no aten::diag).
        eye = torch.eye(self.num_points, dtype=normalised.dtype, device=normalised.device)
        self_weight = (normalised * eye).sum(dim=-1)
        neighbour_weights = normalised * (1 - eye)
        own = torch.matmul(x, self.weight[0])
        neighbours = torch.matmul(x, self.weight[1])
        return self_weight[:, None] * own + torch.matmul(neighbour_weights, neighbours) + self.bias


class GraphConvBNReLU(nn.Module):
    """One graph layer of eq. 4: graph conv, then ``psi`` = BatchNorm over channels (batch x nodes) + ReLU."""

    def __init__(self, conv: nn.Module, out_features: int, bn_momentum: float = 0.1):
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm1d(out_features, momentum=bn_momentum)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor | None) -> torch.Tensor:
        x = self.conv(x, adjacency)
        x = self.bn(x.transpose(1, 2)).transpose(1, 2)
        return F.relu(x)


class GraphResidualBlock(nn.Module):
    """Eq. 5: two graph layers and a skip connection (no ReLU after the addition)."""

    def __init__(self, layer1: GraphConvBNReLU, layer2: GraphConvBNReLU):
        super().__init__()
        self.layer1 = layer1
        self.layer2 = layer2

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor | None) -> torch.Tensor:
        return x + self.layer2(self.layer1(x, adjacency), adjacency)


class GraphRelationalLayers(nn.Module):
    """Fig. 5: graph conv-BN-ReLU (in -> hidden), ``num_blocks`` residual blocks, graph conv (hidden -> out).

    ``variant="paper"`` uses :class:`GraphConv` with the adjacency given to ``forward``;
    ``variant="release"`` uses :class:`ReleaseGraphConv` (own static edge weights; ``forward``'s
    adjacency must be None).
    """

    def __init__(self, in_features: int, neighbourhood: torch.Tensor, hidden_features: int = 128,
                 out_features: int = 2, num_blocks: int = 4, variant: str = "paper", bn_momentum: float = 0.1):
        super().__init__()
        if variant not in ("paper", "release"):
            raise ValueError(f"GraphRelationalLayers: variant must be 'paper' or 'release', got {variant!r}")
        if variant == "paper":
            make_conv = GraphConv
        else:
            make_conv = functools.partial(ReleaseGraphConv, neighbourhood=neighbourhood)

        def layer(features_in: int) -> GraphConvBNReLU:
            return GraphConvBNReLU(make_conv(features_in, hidden_features), hidden_features, bn_momentum)

        self.input_layer = layer(in_features)
        self.blocks = nn.ModuleList(GraphResidualBlock(layer(hidden_features), layer(hidden_features))
                                    for _ in range(num_blocks))
        self.output_conv = make_conv(hidden_features, out_features)  # no BN / ReLU (Sec. III-C)

    def forward(self, nodes: torch.Tensor, adjacency: torch.Tensor | None = None) -> torch.Tensor:
        x = self.input_layer(nodes, adjacency)
        for block in self.blocks:
            x = block(x, adjacency)
        return self.output_conv(x, adjacency)


# =============================================================================================
# Heads
# =============================================================================================

class GraphHead(nn.Module):
    """Landmark-graph relational network head: node embedding -> adjacency -> graph layers.

    Args:
        in_channels: channels of the backbone map.
        feature_size: its height = width (8 for a 256 crop).
        neighbourhood: (N, N) binary matrix with self-loops.
        adjacency: ``"dynamic"`` (paper), ``"static"`` (Table VI: all edges equal -> uniform rows) or
            ``"release"`` (authors' W0/W1 + static learned edge weights).
        expansion: ``n`` of Sec. III-A (4). ``embed_channels``: the first conv's width (256, release).
        hidden_features: F (128). ``num_blocks``: graph residual blocks (4).
        adjacency_hidden: width of the dynamic adjacency's first FC (256).
        output_offset: added to the output bias at initialisation (crop centre in pixels), so the
            untrained head predicts the crop centre instead of the corner.
    Forward: (B, C, H, W) -> ``(coordinates (B, N, 2) in crop pixels, adjacency (B, N, N) or None)``.
    """

    def __init__(self, in_channels: int, feature_size: int, neighbourhood: torch.Tensor | np.ndarray,
                 adjacency: str = "dynamic", expansion: int = 4, embed_channels: int = 256,
                 hidden_features: int = 128, num_blocks: int = 4, adjacency_hidden: int = 256,
                 bn_momentum: float = 0.1, output_offset: float = 0.0):
        super().__init__()
        if adjacency not in ADJACENCY_VARIANTS:
            raise ValueError(f"GraphHead: adjacency must be one of {ADJACENCY_VARIANTS}, got {adjacency!r}")
        num_points = int(neighbourhood.shape[0])
        mask = _check_neighbourhood(neighbourhood, num_points, "GraphHead")
        self.num_points = num_points
        self.adjacency_variant = adjacency
        self.embedding = NodeEmbedding(in_channels, num_points, expansion, embed_channels, bn_momentum)
        node_features = expansion * feature_size * feature_size
        self.dynamic_adjacency = (DynamicAdjacency(expansion * num_points, mask, adjacency_hidden)
                                  if adjacency == "dynamic" else None)
        # Static ablation: every edge of M weighs the same, i.e. softmax of equal logits = 1 / |row|.
        self.register_buffer("static_adjacency", mask.float() / mask.sum(dim=1, keepdim=True), persistent=False)
        self.graph = GraphRelationalLayers(node_features, mask, hidden_features, 2, num_blocks,
                                           variant="release" if adjacency == "release" else "paper",
                                           bn_momentum=bn_momentum)
        with torch.no_grad():
            self.graph.output_conv.bias.add_(output_offset)

    def set_neighbourhood(self, neighbourhood: torch.Tensor) -> None:
        """Use another neighbourhood with the same number of non-zeros (e.g. one loaded from a checkpoint)."""
        mask = _check_neighbourhood(neighbourhood, self.num_points, "GraphHead.set_neighbourhood")
        edge_rows, edge_cols = torch.nonzero(mask, as_tuple=True)
        for module in self.modules():
            if isinstance(module, (DynamicAdjacency, ReleaseGraphConv)):
                if module.edge_rows.numel() != edge_rows.numel():
                    raise ValueError(f"GraphHead.set_neighbourhood: the head was built for {module.edge_rows.numel()} "
                                     f"non-zeros, the new neighbourhood has {edge_rows.numel()}")
                module.set_edges(edge_rows, edge_cols)
        self.static_adjacency.copy_(mask.float() / mask.sum(dim=1, keepdim=True))

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        nodes, node_maps = self.embedding(feature_map)
        if self.adjacency_variant == "dynamic":
            adjacency = self.dynamic_adjacency(node_maps)
        elif self.adjacency_variant == "static":
            adjacency = self.static_adjacency
        else:
            adjacency = None
        return self.graph(nodes, adjacency), adjacency


class FCHead(nn.Module):
    """Fully connected baseline head of Table I: flatten -> FC(256) -> ReLU -> FC(2N), in crop pixels."""

    def __init__(self, in_channels: int, feature_size: int, num_points: int, hidden_features: int = 256,
                 output_offset: float = 0.0):
        super().__init__()
        self.num_points = num_points
        self.fc1 = nn.Linear(in_channels * feature_size * feature_size, hidden_features)
        self.fc2 = nn.Linear(hidden_features, 2 * num_points)
        with torch.no_grad():
            self.fc2.bias.add_(output_offset)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, None]:
        hidden = F.relu(self.fc1(feature_map.flatten(1)))
        return self.fc2(hidden).reshape(-1, self.num_points, 2), None


# =============================================================================================
# Backbones: one map at stride 32 (8 x 8 for a 256 crop)
# =============================================================================================

class LastFeatureMap(nn.Module):
    """Wrap a multi-scale trunk (``forward`` -> [C2, C3, C4, C5]) and return its stride-32 map C5."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.out_channels = int(trunk.out_channels[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)[-1]


class HRNetBranchesFeatureMap(nn.Module):
    """HRNet's four branches resized (bilinear) down to the stride-32 grid and concatenated (270 ch for W18).

    This is how the paper ("we downsample feature maps of different resolutions into 8 x 8") and
    the release bring HRNet to the graph head. HRNet's own landmark head is not used (removed).
    """

    def __init__(self, hrnet: nn.Module):
        super().__init__()
        hrnet.head = nn.Identity()  # SLPT's stride-4 head is unused here; drop its parameters
        self.trunk = hrnet
        self.out_channels = int(sum(hrnet.branch_widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = self.trunk.forward_branches(x)
        size = branches[-1].shape[-2:]
        resized = [F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in branches[:-1]]
        return torch.cat(resized + [branches[-1]], dim=1)


class _TimmFeatureMap(nn.Module):
    def __init__(self, trunk: nn.Module, out_channels: int):
        super().__init__()
        self.trunk = trunk
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)[-1]


def timm_feature_map(model_name: str) -> nn.Module:
    """Any timm model's last (stride-32) feature map, randomly initialised (facemark never downloads).

    Needs the optional ``timm`` package (``pip install 'facemark[timm]'``). Load ImageNet weights
    yourself from a local file into ``.trunk`` if wanted.
    """
    try:
        import timm  # optional dependency: imported here only
    except ImportError as error:
        raise ImportError(f"backbone 'timm:{model_name}' needs the optional timm package "
                          "(pip install 'facemark[timm]'); it is not installed") from error
    trunk = timm.create_model(model_name, pretrained=False, features_only=True)
    reduction = trunk.feature_info.reduction()[-1]
    if reduction != 32:
        raise ValueError(f"timm model {model_name!r}: last feature map has stride {reduction}, SDFL needs 32 "
                         "(an 8 x 8 map for a 256 crop)")
    return _TimmFeatureMap(trunk, int(trunk.feature_info.channels()[-1]))


def _resnet18_map(bn_momentum: float) -> nn.Module:
    from facemark.models.resnet import resnet18

    return LastFeatureMap(resnet18(bn_momentum=bn_momentum))


def _resnet34_map(bn_momentum: float) -> nn.Module:
    from facemark.models.resnet import resnet34

    return LastFeatureMap(resnet34(bn_momentum=bn_momentum))


def _mobilenet_v2_map(bn_momentum: float) -> nn.Module:
    from facemark.models.mobilenet import mobilenet_v2

    return LastFeatureMap(mobilenet_v2(bn_momentum=bn_momentum))


def _vgg16_map(bn_momentum: float) -> nn.Module:
    from facemark.models.vgg import vgg16

    return LastFeatureMap(vgg16(batch_norm=True, bn_momentum=bn_momentum))


def _hrnet_w18c_map(bn_momentum: float) -> nn.Module:
    # HRNet keeps the momentum of its release (0.01, set in facemark.models.hrnet).
    from facemark.models.hrnet import hrnet_w18c

    return HRNetBranchesFeatureMap(hrnet_w18c())


# Backbone name -> builder(bn_momentum) of a module returning the stride-32 map, with ``.out_channels``.
BACKBONES: dict[str, Callable[[float], nn.Module]] = {
    "resnet18": _resnet18_map,
    "resnet34": _resnet34_map,
    "mobilenet_v2": _mobilenet_v2_map,
    "vgg16": _vgg16_map,
    "hrnet_w18c": _hrnet_w18c_map,
}


def build_backbone(name: str, bn_momentum: float = 0.1) -> nn.Module:
    """A backbone from :data:`BACKBONES`, or ``"timm:<model name>"`` for a timm model."""
    if name.startswith("timm:"):
        return timm_feature_map(name[len("timm:"):])
    if name not in BACKBONES:
        raise ValueError(f"unknown SDFL backbone {name!r}; choose one of {sorted(BACKBONES)} or 'timm:<model name>'")
    return BACKBONES[name](bn_momentum)


# =============================================================================================
# The model
# =============================================================================================

@dataclass
class SDFLOutput:
    """``landmarks``: (B, N, 2) in normalised crop coordinates. ``adjacency``: the (B, N, N)
    row-normalised dynamic adjacency ``sigma(A)`` (the graph head's "dynamic" variant) or None."""

    landmarks: torch.Tensor
    adjacency: torch.Tensor | None = None


class SDFLModel(nn.Module):
    """Backbone + head (graph or FC), with the neighbourhood as a persistent buffer.

    Build it with :func:`sdfl_graph_model` or :func:`sdfl_fc_model`; ``config`` holds the builder
    arguments (everything but the neighbourhood) so a checkpoint can be rebuilt with
    :func:`sdfl_model_from_state_dict`.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, neighbourhood: torch.Tensor | None,
                 input_size: int, config: dict, initial_shape: np.ndarray | torch.Tensor | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.input_size = input_size
        self.config = dict(config)
        if neighbourhood is not None:
            self.register_buffer("neighbourhood", torch.as_tensor(neighbourhood).bool().clone())
        else:
            self.neighbourhood = None
        if initial_shape is not None:
            # facemark's option (not the paper's): the head's output is an offset from this shape
            # (N, 2, normalised crop coordinates; e.g. the training crops' mean) instead of from the
            # crop centre, so the untrained model already predicts the mean shape, as SLPT's does.
            # A persistent buffer, like the neighbourhood: a checkpoint carries it.
            shape = torch.as_tensor(np.asarray(initial_shape, dtype=np.float32))
            if shape.shape != (head.num_points, 2):
                raise ValueError(f"SDFLModel: initial_shape must be ({head.num_points}, 2), got {tuple(shape.shape)}")
            self.register_buffer("initial_shape", shape.clone())
        else:
            self.initial_shape = None
        # A neighbourhood loaded from a checkpoint replaces the one the head's edges were built from.
        self.register_load_state_dict_post_hook(SDFLModel._sync_head_neighbourhood)

    @staticmethod
    def _sync_head_neighbourhood(module: "SDFLModel", incompatible_keys) -> None:
        if isinstance(module.head, GraphHead) and module.neighbourhood is not None:
            module.head.set_neighbourhood(module.neighbourhood)

    def forward(self, images: torch.Tensor) -> SDFLOutput:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (self.input_size, self.input_size):
            raise ValueError(f"SDFLModel: expected images of shape (B, 3, {self.input_size}, {self.input_size}), "
                             f"got {tuple(images.shape)}")
        coordinates, adjacency = self.head(self.backbone(images))
        landmarks = coordinates / self.input_size
        if self.initial_shape is not None:
            landmarks = landmarks + (self.initial_shape - 0.5)  # the head starts at the centre, 0.5
        return SDFLOutput(landmarks=landmarks, adjacency=adjacency)


def _feature_size(input_size: int) -> int:
    if input_size % 32 != 0 or input_size < 32:
        raise ValueError(f"SDFL: input_size must be a positive multiple of 32 (stride-32 backbones), got {input_size}")
    return input_size // 32


def sdfl_graph_model(num_points: int, neighbourhood: np.ndarray | torch.Tensor, backbone: str = "resnet18",
                     adjacency: str = "dynamic", input_size: int = 256, hidden_features: int = 128,
                     num_blocks: int = 4, expansion: int = 4, bn_momentum: float = 0.1,
                     initial_shape: np.ndarray | torch.Tensor | None = None) -> SDFLModel:
    """SDFL with the landmark-graph relational head (the paper's model; ``adjacency`` picks the variant).

    The release's configuration is ``backbone="resnet34", adjacency="release", bn_momentum=0.01``
    with :func:`release_wflw98_neighbourhood` on WFLW. ``initial_shape`` (N, 2, normalised crop
    coordinates): the shape the untrained model predicts (default: every point at the crop centre).
    """
    feature_size = _feature_size(input_size)
    mask = _check_neighbourhood(neighbourhood, num_points, "sdfl_graph_model")
    trunk = build_backbone(backbone, bn_momentum)
    head = GraphHead(trunk.out_channels, feature_size, mask, adjacency=adjacency, expansion=expansion,
                     hidden_features=hidden_features, num_blocks=num_blocks, bn_momentum=bn_momentum,
                     output_offset=input_size / 2)
    config = dict(head="graph", num_points=num_points, backbone=backbone, adjacency=adjacency, input_size=input_size,
                  hidden_features=hidden_features, num_blocks=num_blocks, expansion=expansion, bn_momentum=bn_momentum)
    return SDFLModel(trunk, head, mask, input_size, config, initial_shape=initial_shape)


def sdfl_fc_model(num_points: int, backbone: str = "resnet18", input_size: int = 256, hidden_features: int = 256,
                  bn_momentum: float = 0.1, neighbourhood: np.ndarray | torch.Tensor | None = None) -> SDFLModel:
    """The FC baseline of Table I on an SDFL backbone. ``neighbourhood`` is optional: kept as a buffer
    for the relative location loss (Table VI trains the FC head with it too)."""
    feature_size = _feature_size(input_size)
    mask = None if neighbourhood is None else _check_neighbourhood(neighbourhood, num_points, "sdfl_fc_model")
    trunk = build_backbone(backbone, bn_momentum)
    head = FCHead(trunk.out_channels, feature_size, num_points, hidden_features, output_offset=input_size / 2)
    config = dict(head="fc", num_points=num_points, backbone=backbone, input_size=input_size,
                  hidden_features=hidden_features, bn_momentum=bn_momentum)
    return SDFLModel(trunk, head, mask, input_size, config)


def sdfl_model_from_config(config: dict, neighbourhood: np.ndarray | torch.Tensor | None,
                           initial_shape: np.ndarray | torch.Tensor | None = None) -> SDFLModel:
    """Rebuild a model from ``SDFLModel.config``, a neighbourhood and (graph head) its initial shape."""
    arguments = {key: value for key, value in config.items() if key != "head"}
    if config.get("head") == "graph":
        if neighbourhood is None:
            raise ValueError("sdfl_model_from_config: a graph head needs the neighbourhood")
        return sdfl_graph_model(neighbourhood=neighbourhood, initial_shape=initial_shape, **arguments)
    if config.get("head") == "fc":
        return sdfl_fc_model(neighbourhood=neighbourhood, **arguments)
    raise ValueError(f"sdfl_model_from_config: config['head'] must be 'graph' or 'fc', got {config.get('head')!r}")


def sdfl_model_from_state_dict(config: dict, state_dict: dict) -> SDFLModel:
    """Rebuild from ``model.config`` and ``model.state_dict()``: the neighbourhood comes from the state
    dict's ``neighbourhood`` buffer (never re-derived); the load is strict."""
    model = sdfl_model_from_config(config, state_dict.get("neighbourhood"), state_dict.get("initial_shape"))
    model.load_state_dict(state_dict, strict=True)
    return model


# =============================================================================================
# Loss (eq. 6-10)
# =============================================================================================

def sdfl_loss_terms(output: SDFLOutput, target: torch.Tensor, crop_size: float = 256,
                    neighbourhood: torch.Tensor | None = None,
                    point_loss: Callable[[torch.Tensor], torch.Tensor] = soft_wing_loss,
                    relative_weight: float = 1.0, laplacian: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The two terms of eq. 10 in crop pixels: ``{"absolute", "relative", "total"}``.

    ``target`` is (B, N, 2) in normalised crop coordinates, like ``output.landmarks``; both are
    multiplied by ``crop_size`` so Soft Wing's thresholds (2 and 20 px) mean pixels of the crop.
    Each term is averaged over batch, points and x/y (as the release does; eq. 10's sum over points
    only rescales the loss). ``relative`` uses the uniform Laplacian of ``neighbourhood`` (eq. 7),
    or the (N, N) matrix ``laplacian`` when given (e.g. the release's, on its one-direction edge
    lists); with ``relative_weight=0`` it is skipped and neither is needed.
    """
    prediction = output.landmarks
    if prediction.shape != target.shape:
        raise ValueError(f"sdfl_loss: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    # In float32 whatever the network's autocast dtype: a float16 coordinate at 256 px has 0.125 px steps.
    prediction_px = prediction.float() * crop_size
    target_px = target.float() * crop_size
    absolute = point_loss(prediction_px - target_px).mean()
    terms = {"absolute": absolute}
    total = absolute
    if relative_weight:
        if laplacian is None:
            if neighbourhood is None:
                raise ValueError("sdfl_loss: relative_weight != 0 needs the neighbourhood (e.g. model.neighbourhood)")
            laplacian = uniform_laplacian(neighbourhood.to(prediction.device))
        laplacian = laplacian.to(prediction.device)
        relative = relative_location_loss(prediction_px, target_px, laplacian, point_loss).mean()
        terms["relative"] = relative
        total = total + relative_weight * relative
    terms["total"] = total
    return terms


def sdfl_loss(output: SDFLOutput, target: torch.Tensor, crop_size: float = 256,
              neighbourhood: torch.Tensor | None = None,
              point_loss: Callable[[torch.Tensor], torch.Tensor] = soft_wing_loss,
              relative_weight: float = 1.0, laplacian: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 10: Soft Wing on absolute positions + ``relative_weight`` x Soft Wing on Laplacian coordinates."""
    return sdfl_loss_terms(output, target, crop_size, neighbourhood, point_loss, relative_weight, laplacian)["total"]


# =============================================================================================
# Accounting
# =============================================================================================

def graph_layers_flops(num_points: int = 98, k: int = 3, in_features: int = 256, hidden_features: int = 128,
                       out_features: int = 2, num_blocks: int = 4, nonzeros: int | None = None) -> dict[str, int]:
    """Analytic FLOPs (1 multiply-add = 2 FLOPs) of the graph relational layers, several ways.

    - ``paper_formula``: the paper's ``2N(k+1+F)I + 14N(k+1+F)F + 2N(k+1+O)F`` (29.95 M for 98, 3,
      256, 128, 2), which counts 7 hidden F -> F layers;
    - ``paper_formula_all_layers``: the same per-layer cost with all ``2 * num_blocks`` hidden layers;
    - ``sparse_exact``: ``(A H) W`` with the true number of non-zeros (``nonzeros``, default N(k+1));
    - ``dense_as_implemented``: facemark's ``A (H W)`` with a dense (N, N) A, which is what
      ``torch.utils.flop_counter`` sees.
    Bias, BN, ReLU, softmax and the residual additions are not counted (as in the paper).
    """
    n, f = num_points, hidden_features
    per_row = k + 1
    nonzeros = n * per_row if nonzeros is None else nonzeros
    hidden_layers = 2 * num_blocks
    layer_shapes = [(in_features, f)] + [(f, f)] * hidden_layers + [(f, out_features)]
    paper = 2 * n * (per_row + f) * in_features + 14 * n * (per_row + f) * f + 2 * n * (per_row + out_features) * f
    paper_all = sum(2 * n * (per_row + d_out) * d_in for d_in, d_out in layer_shapes)
    sparse = sum(2 * nonzeros * d_in + 2 * n * d_in * d_out for d_in, d_out in layer_shapes)
    dense = sum(2 * n * d_in * d_out + 2 * n * n * d_out for d_in, d_out in layer_shapes)
    return {"paper_formula": paper, "paper_formula_all_layers": paper_all, "sparse_exact": sparse,
            "dense_as_implemented": dense}


def parameter_counts(model: SDFLModel) -> dict[str, int]:
    """Trainable parameters per part: backbone, node embedding, dynamic adjacency, graph layers (or FC head), total."""
    def count(module: nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    counts = {"backbone": count(model.backbone)}
    if isinstance(model.head, GraphHead):
        counts["node_embedding"] = count(model.head.embedding)
        counts["dynamic_adjacency"] = count(model.head.dynamic_adjacency)
        counts["graph_layers"] = count(model.head.graph)
    else:
        counts["fc_head"] = count(model.head)
    counts["total"] = count(model)
    return counts
