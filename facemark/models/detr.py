"""The DETR-style baseline of SLPT's Table 1 and Table 8 (Xia et al., CVPR 2022, Sec. 4.4 and
Appendix A.3): SLPT's backbone and landmark queries, but the decoder's cross-attention reads the
WHOLE feature map (16 x 16 tokens) instead of one sparse local patch per landmark, in one stage.

Pipeline::

    image (B,3,S,S) -> backbone -> feature map (B,C,S/4,S/4)             (SLPT's backbones)
    tokens = token_embedding(map): a P x P conv with stride P, no bias      (B, d, S/4P, S/4P)
    memory M = LN(tokens as (B, 256, d)) + E, E = 2-D sine positions       (DETR [5])
    T = 0; for each layer (SLPT's pre-norm inherent relation layer):
        T += MSA(LN(T) + Q, LN(T));  T += MCA(LN(T) + Q, M, M);  T += FFN(LN(T))
    landmarks of layer l = sigmoid(Linear(final_norm(T_l)))                 (every layer supervised)

What the paper gives and what is facemark's choice (the authors released no code for this
baseline, and Appendix A.3 is not in the text we have):

* From the paper: the backbone (HRNetW18C-lite, Table 1 and 8), landmark queries decoded by a
  transformer "referring to DETR" over the full feature map, 16 x 16 input tokens (Sec. 4.4; eq. 6
  counts W_I H_I / (P_w P_h) tokens, i.e. the 64 x 64 map cut into 4 x 4 patches), one stage (the
  coarse-to-fine framework is SLPT's), the size in Table 8: 11.00 M parameters (98 points), 4.26 G
  multiply-adds.
* facemark's choices, each the DETR or SLPT design where they agree and picked to fit Table 8:
  the tokens are a 4 x 4 stride-4 convolution of the map (the full-map form of SLPT's patch
  embedding; 1.05 M parameters, which is what Table 8's 11.00 M leaves after the backbone and
  the six decoder layers. Measured with :func:`facemark.models.complexity.measure_complexity`
  (256 crop, fvcore-style multiply-adds as Table 8 counts them), 98 / 68 / 29 points: 4.26 /
  4.06 / 3.80 G multiply-adds, the table's numbers to the digit, and 11,006,604 / 10,998,924 /
  10,988,940 parameters against its 11.00 / 11.00 / 10.99 M); a LayerNorm on the tokens, so
  that their content and the positions are of one scale (DETR's memory leaves its post-norm
  encoder normalised; without it the tokens' norm was ~54 against the positions' 8 on SynthFace;
  the SLPT release holds a LayerNorm ``feature_norm`` of this width that its forward never uses,
  and Table 8 counts it for SLPT); DETR's fixed 2-D sine positional
  encoding, added to the tokens as ViT adds its position embedding, so that keys AND values
  carry it (a learned one would add 65 k parameters, a DETR encoder 0.8 M per layer: neither
  fits the table). DETR adds it to the keys only, but its encoder mixes positions into the
  values; without an encoder, values without positions carry no explicit position for the head
  to read. No encoder; SLPT's six pre-norm
  layers (d 256, 8 heads, FFN 1024, dropout 0.1) with the content T starting at zeros; DETR's
  sigmoid on a linear head to give normalised crop coordinates directly; every layer's output
  through the shared final LayerNorm and head, supervised with SLPT's eq. 8 (DETR's auxiliary
  decoding losses are the same idea); landmark queries initialised N(0, 1) as DETR's query
  embeddings (``embedding_init="release"``: SLPT's xavier init).
* facemark's options for short CPU budgets (off in the paper recipes; the SynthFace CPU preset
  uses them, docs/slpt.md): ``initial_content="queries"``, ``reference`` (offsets from the
  training mean face) and ``attention_prior`` (a fixed Gaussian bias on the cross-attention
  logits around each landmark's reference, as SMCA; the softmax still spans every token).

The model returns :class:`facemark.models.slpt.SLPTOutput` with one stage, so SLPT's loss
(:func:`facemark.models.slpt.slpt_loss`), per-stage tools and the facemark model contract
(``model(images).landmarks``, (B, N, 2) normalised crop coordinates) apply unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from facemark.models.slpt import BACKBONES, InherentRelationLayer, SLPTOutput

__all__ = ["DETRLandmarks", "build_detr", "sine_positional_encoding", "EMBEDDING_INITS", "INITIAL_CONTENTS"]

EMBEDDING_INITS = ("normal", "release")
INITIAL_CONTENTS = ("zeros", "queries")


def sine_positional_encoding(height: int, width: int, dim: int, temperature: float = 10000.0,
                             device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DETR's fixed 2-D sine positional encoding of a ``height`` x ``width`` grid: (height * width, dim),
    row-major (the order of ``tokens.flatten(2)``).

    The first dim/2 channels encode the row, the last dim/2 the column. A position is its 1-based
    index divided by the grid side, times 2 pi (positions in (0, 2 pi], independent of the grid
    size); channel pair k of a half holds sin and cos of position / temperature^(4k / dim).
    """
    if dim % 4 != 0:
        raise ValueError(f"sine positional encoding: dim = {dim} must be a multiple of 4 (sin and cos of rows and columns)")
    quarter = dim // 4
    frequencies = temperature ** (torch.arange(quarter, device=device, dtype=torch.float32) * 4.0 / dim)

    def encode(size: int) -> torch.Tensor:  # (size, dim / 2): [sin f0, cos f0, sin f1, cos f1, ...]
        positions = torch.arange(1, size + 1, device=device, dtype=torch.float32) / size * (2 * math.pi)
        angles = positions[:, None] / frequencies
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)

    rows = encode(height)[:, None, :].expand(height, width, dim // 2)
    columns = encode(width)[None, :, :].expand(height, width, dim // 2)
    return torch.cat((rows, columns), dim=-1).reshape(height * width, dim).to(dtype)


class DETRLandmarks(nn.Module):
    """Landmark queries decoded over the whole feature map (use :func:`build_detr`).

    Args:
        num_points: N landmarks.
        backbone: a key of :data:`facemark.models.slpt.BACKBONES` (a module with ``out_channels``
            giving a stride-4 map).
        patch_size: side, in feature-map pixels, of the square patch each token embeds (4: the
            64 x 64 map of a 256 crop gives 16 x 16 tokens). The map's side must be a multiple.
        num_layers, embed_dim, num_heads, feedforward_dim, dropout: the decoder (SLPT's layers).
        embedding_init: "normal" (landmark queries N(0, 1), DETR's) or "release" (xavier-uniform
            over the (1, N, d) tensor, as the SLPT release initialises its queries).
        initial_content: "zeros" (DETR's and SLPT's T^1 = 0) or "queries" (T^1 = Q, as SLPT's
            option of that name: a landmark's identity is in its token from the first layer instead
            of only in which tokens it attends to; facemark's option for short CPU budgets).
        reference: None (DETR: the head's sigmoid gives the coordinates) or (N, 2) reference
            landmarks in (0, 1), e.g. the training crops' mean face: the head then predicts an
            offset in logit space, ``sigmoid(logit(reference) + head(T))``, starting at zero (as
            Deformable DETR's reference points; SLPT starts its stage 1 from the mean face too).
            facemark's option for short CPU budgets: the first prediction is the mean shape
            instead of points scattered over the crop. Stored as the ``reference`` buffer.
        attention_prior: None (DETR: the cross-attention logits are the query-key products only) or
            a width ``s`` in normalised crop units: every layer's cross-attention logit of landmark
            ``i`` for token ``j`` gets ``-|c_j - r_i|^2 / (2 s^2)``, ``c_j`` the token's centre and
            ``r_i`` the landmark's reference, a fixed Gaussian prior around the reference as in
            SMCA (Gao et al., "Fast Convergence of DETR with Spatially Modulated Co-Attention",
            ICCV 2021). The softmax still spans every token. facemark's option for short CPU
            budgets (docs/slpt.md): without it each landmark starts reading an average of the
            whole map, whose image-dependent part is too small to learn from in minutes.
    """

    def __init__(self, num_points: int, backbone: str = "hrnet_w18c_lite", patch_size: int = 4, num_layers: int = 6,
                 embed_dim: int = 256, num_heads: int = 8, feedforward_dim: int = 1024, dropout: float = 0.1,
                 embedding_init: str = "normal", initial_content: str = "zeros",
                 reference: torch.Tensor | None = None, attention_prior: float | None = None):
        super().__init__()
        checks = [
            ("num_points", num_points >= 2, ">= 2"),
            ("backbone", backbone in BACKBONES, f"one of {sorted(BACKBONES)}"),
            ("patch_size", patch_size >= 1, ">= 1"),
            ("num_layers", num_layers >= 1, ">= 1"),
            ("embed_dim", embed_dim >= 4 and embed_dim % 4 == 0 and embed_dim % num_heads == 0,
             f"a multiple of 4 and of num_heads={num_heads}"),
            ("dropout", 0 <= dropout < 1, "in [0, 1)"),
            ("embedding_init", embedding_init in EMBEDDING_INITS, f"one of {list(EMBEDDING_INITS)}"),
            ("initial_content", initial_content in INITIAL_CONTENTS, f"one of {list(INITIAL_CONTENTS)}"),
            ("attention_prior", attention_prior is None or (attention_prior > 0 and reference is not None),
             "None, or a width > 0 together with a reference (the prior is centred on it)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"DETR baseline: {name} = {locals()[name]!r}; expected {expected}")
        self.num_points = num_points
        self.patch_size = patch_size
        self.initial_content = initial_content
        self.attention_prior = None if attention_prior is None else float(attention_prior)
        self.backbone = BACKBONES[backbone]()
        self.token_embedding = nn.Conv2d(self.backbone.out_channels, embed_dim, patch_size, stride=patch_size,
                                         bias=False)
        # The tokens' content at unit scale per channel, comparable to the sine positions (DETR's
        # memory leaves its post-norm encoder normalised the same way).
        self.token_norm = nn.LayerNorm(embed_dim)
        self.landmark_queries = nn.Parameter(torch.empty(1, num_points, embed_dim))
        self.layers = nn.ModuleList(InherentRelationLayer(embed_dim, num_heads, feedforward_dim, dropout)
                                    for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(embed_dim)  # shared by every layer's output
        self.prediction_head = nn.Linear(embed_dim, 2)  # sigmoid -> normalised crop coordinates
        # As SLPT's and DETR's transformers: xavier-uniform on every weight matrix outside the backbone.
        for name, parameter in self.named_parameters():
            if not name.startswith("backbone.") and parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        if embedding_init == "normal":
            nn.init.normal_(self.landmark_queries)
        if reference is not None:
            reference = torch.as_tensor(reference, dtype=torch.float32)
            if reference.shape != (num_points, 2) or not ((reference > 0) & (reference < 1)).all():
                raise ValueError(f"DETR baseline: reference must be ({num_points}, 2) points inside the crop (0, 1); "
                                 f"got shape {tuple(reference.shape)}")
            self.register_buffer("reference", reference)
            # The offset starts at zero: the first prediction is the reference itself.
            nn.init.zeros_(self.prediction_head.weight)
            nn.init.zeros_(self.prediction_head.bias)

    def token_grid(self, images: torch.Tensor) -> tuple[int, int]:
        """Rows and columns of the token grid for ``images`` (the stride-4 map cut into patches)."""
        return images.shape[-2] // (4 * self.patch_size), images.shape[-1] // (4 * self.patch_size)

    def memory(self, images: torch.Tensor) -> torch.Tensor:
        """The decoder's memory (B, T, d): the tokens plus their sine positions, the keys and the
        values of the cross-attention."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"DETR baseline expects images of shape (B, 3, S, S), got {tuple(images.shape)}")
        feature_map = self.backbone(images)
        height, width = feature_map.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"DETR baseline: the {height} x {width} feature map is not a multiple of "
                             f"patch_size={self.patch_size} (input {tuple(images.shape[-2:])})")
        tokens = self.token_embedding(feature_map)  # (B, d, h, w)
        grid_height, grid_width = tokens.shape[-2:]
        tokens = self.token_norm(tokens.flatten(2).transpose(1, 2))  # (B, h*w, d), row-major
        positions = sine_positional_encoding(grid_height, grid_width, tokens.shape[-1], device=tokens.device,
                                             dtype=tokens.dtype)
        return tokens + positions

    def attention_bias(self, grid_height: int, grid_width: int) -> torch.Tensor | None:
        """The spatial prior added to the cross-attention logits, (N, grid_height * grid_width) in
        the tokens' row-major order, or None without ``attention_prior``."""
        if self.attention_prior is None:
            return None
        reference = self.reference
        rows = (torch.arange(grid_height, device=reference.device, dtype=reference.dtype) + 0.5) / grid_height
        columns = (torch.arange(grid_width, device=reference.device, dtype=reference.dtype) + 0.5) / grid_width
        centres = torch.stack((columns.view(1, -1).expand(grid_height, grid_width),
                               rows.view(-1, 1).expand(grid_height, grid_width)), dim=-1).reshape(-1, 2)
        squared = (reference[:, None, :] - centres[None, :, :]).square().sum(-1)
        return -squared / (2 * self.attention_prior ** 2)

    def forward(self, images: torch.Tensor) -> SLPTOutput:
        memory = self.memory(images)
        content = memory.new_zeros(memory.shape[0], self.num_points, memory.shape[-1])  # T^1 = 0, as SLPT
        if self.initial_content == "queries":
            content = content + self.landmark_queries
        bias = self.attention_bias(*self.token_grid(images))
        outputs = []
        for layer in self.layers:
            content = layer(content, self.landmark_queries, memory, memory, bias)
            outputs.append(content)
        logits = self.prediction_head(self.final_norm(torch.stack(outputs, dim=1)))
        if hasattr(self, "reference"):
            reference = self.reference.to(logits.dtype)
            logits = logits + (reference.log() - (1 - reference).log())  # logit, written out for ONNX
        landmarks = torch.sigmoid(logits)
        return SLPTOutput([landmarks])  # one stage: (B, L, N, 2), every layer's prediction

    @torch.no_grad()
    def cross_attention_weights(self, images: torch.Tensor) -> torch.Tensor:
        """The cross-attention weights of every layer: (B, L, heads, N, T), each row a distribution
        over the T tokens of the map (for inspection, e.g. as SLPT's Fig. 5). Dropout is off in eval()."""
        weights = []

        def record(module, args, kwargs):
            query, key = args[0], args[1]
            weights.append(module.attention_weights(query, key, kwargs.get("attention_bias")))

        hooks = [layer.cross_attention.register_forward_pre_hook(record, with_kwargs=True) for layer in self.layers]
        try:
            self(images)
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack(weights, dim=1)


def build_detr(num_points: int, backbone: str = "hrnet_w18c_lite", patch_size: int = 4, num_layers: int = 6,
               embed_dim: int = 256, num_heads: int = 8, feedforward_dim: int = 1024, dropout: float = 0.1,
               embedding_init: str = "normal", initial_content: str = "zeros",
               reference: torch.Tensor | None = None, attention_prior: float | None = None) -> DETRLandmarks:
    """The DETR-style baseline; the defaults are the configuration of SLPT's Table 1 and 8 rows
    (HRNetW18C-lite, 16 x 16 tokens for a 256 crop, 6 layers of SLPT's width)."""
    return DETRLandmarks(num_points, backbone=backbone, patch_size=patch_size, num_layers=num_layers,
                         embed_dim=embed_dim, num_heads=num_heads, feedforward_dim=feedforward_dim, dropout=dropout,
                         embedding_init=embedding_init, initial_content=initial_content, reference=reference,
                         attention_prior=attention_prior)
