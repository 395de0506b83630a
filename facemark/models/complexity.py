"""Model size and compute: parameters, FLOPs (``torch.utils.flop_counter``) and multiply-adds
counted as the papers' tables do (fvcore style). Generic: any module and example inputs.

Two countings, both measured by running the module once on the example inputs:

* ``flops``: :class:`torch.utils.flop_counter.FlopCounterMode`, 2 FLOPs per multiply-add of
  convolutions, matrix products and attention; elementwise work is not counted. CPU
  ``scaled_dot_product_attention`` (which FlopCounterMode does not know) is added here.
* ``multiply_adds``: the fvcore convention that SLPT's Table 8 uses (one "FLOP" = one
  multiply-add): half of the above, plus per-element costs of normalisation and resampling as
  fvcore counts them: BatchNorm 2 per element at inference (5 in training), LayerNorm 5 per
  element (4 without affine), bilinear upsampling and ``grid_sample`` 4 per output element,
  nearest upsampling 1, adaptive average pooling 1 per input element. Other elementwise ops
  (ReLU, additions, softmax) are not counted, as in fvcore.

    >>> report = measure_complexity(model.eval(), torch.zeros(1, 3, 256, 256))
    >>> report.parameters, report.flops / 1e9, report.multiply_adds / 1e9
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["count_parameters", "ComplexityReport", "measure_complexity", "count_flops", "count_multiply_adds"]

aten = torch.ops.aten


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one.
_EXTRA_FLOP_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


class _ElementCostMode(TorchDispatchMode):
    """Counts fvcore's per-element costs of normalisation / resampling ops."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_op: dict[str, int] = {}

    def _add(self, name: str, count: int) -> None:
        self.total += count
        self.by_op[name] = self.by_op.get(name, 0) + count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = func.overloadpacket
        if op in (aten.native_batch_norm, aten._native_batch_norm_legit, aten.cudnn_batch_norm,
                  aten.miopen_batch_norm, aten._native_batch_norm_legit_no_training):
            training = op is not aten._native_batch_norm_legit_no_training and bool(args[5])
            affine = args[1] is not None
            per_element = (5 if affine else 4) if training else (2 if affine else 1)
            self._add("batch_norm", args[0].numel() * per_element)
        elif op is aten.native_layer_norm:
            affine = len(args) > 2 and args[2] is not None
            self._add("layer_norm", args[0].numel() * (5 if affine else 4))
        elif op in (aten.upsample_bilinear2d, aten._upsample_bilinear2d_aa, aten.grid_sampler_2d):
            first = out[0] if isinstance(out, (tuple, list)) else out
            self._add(op.__name__.split(".")[-1], first.numel() * 4)
        elif op in (aten.upsample_nearest2d, aten._upsample_nearest_exact2d):
            self._add("upsample_nearest2d", out.numel())
        elif op is aten._adaptive_avg_pool2d:
            self._add("adaptive_avg_pool2d", args[0].numel())
        return out


@dataclass
class ComplexityReport:
    """``flops``: FlopCounterMode total (2 per MAC); ``multiply_adds``: fvcore-style total;
    ``flops_by_module``: FlopCounterMode totals per module name (``""`` is the whole module);
    ``element_costs``: the per-element part of ``multiply_adds`` by op."""

    parameters: int
    flops: int
    multiply_adds: int
    flops_by_module: dict[str, int] = field(default_factory=dict)
    element_costs: dict[str, int] = field(default_factory=dict)


def measure_complexity(module: nn.Module, *inputs, **kwargs) -> ComplexityReport:
    """Run ``module(*inputs, **kwargs)`` once without gradients and count. The module's mode is
    left as it is: put it in ``eval()`` for inference numbers (BatchNorm counts differ)."""
    flop_counter = FlopCounterMode(display=False, depth=None, custom_mapping=_EXTRA_FLOP_FORMULAS)
    element_costs = _ElementCostMode()
    with torch.no_grad(), flop_counter, element_costs:
        module(*inputs, **kwargs)
    flops = flop_counter.get_total_flops()
    by_module = {name.replace("Global", "", 1).lstrip("."): sum(ops.values())
                 for name, ops in flop_counter.get_flop_counts().items()}
    return ComplexityReport(
        parameters=count_parameters(module),
        flops=flops,
        multiply_adds=flops // 2 + element_costs.total,
        flops_by_module=by_module,
        element_costs=dict(element_costs.by_op),
    )


def count_flops(module: nn.Module, *inputs, **kwargs) -> int:
    """FLOPs of one forward as ``torch.utils.flop_counter`` counts them (2 per multiply-add)."""
    return measure_complexity(module, *inputs, **kwargs).flops


def count_multiply_adds(module: nn.Module, *inputs, **kwargs) -> int:
    """Multiply-adds of one forward counted as fvcore / the SLPT paper's Table 8 do."""
    return measure_complexity(module, *inputs, **kwargs).multiply_adds
