"""Deterministic random weights for any model: what the harness compares models with.

Default initialisation leaves every BatchNorm at the identity (weight 1, bias 0, mean 0,
var 1), which hides folding and wiring bugs; ``seed_weights`` draws every parameter and
BatchNorm statistic from a seed instead, the same on every platform (CPU Mersenne
twister only).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from harness.core.introspect import held_modules

# Conv/linear weights keep unit activation variance (LeCun uniform), so outputs stay
# input-dependent through a deep stack instead of collapsing to the biases or saturating
# a sigmoid; BN values are kept away from the identity so that folding is really exercised.
_BIAS_RANGE = (-0.1, 0.1)
_BN_RANGES = {
    "weight": (0.5, 1.5),
    "bias": (-0.2, 0.2),
    "running_mean": (-0.2, 0.2),
    "running_var": (0.5, 2.0),
}


def _fill_uniform(tensor: torch.Tensor, low: float, high: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        tensor.copy_(torch.rand(tensor.shape, generator=generator).to(tensor) * (high - low) + low)


def top_level_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules held directly by ``model`` (registered or not, e.g. in a tuple), by path."""
    return {h.path: h.obj for h in held_modules(model)
            if "." not in h.path and isinstance(h.obj, nn.Module)}


def seed_weights(model: nn.Module, seed: int, groups: Mapping[str, nn.Module] | None = None) -> nn.Module:
    """Overwrite every weight and BatchNorm statistic of ``model`` from ``seed``; returns ``model``.

    Each group (default: ``top_level_modules``) draws from its own generator, seeded by
    ``seed`` and the group's name, so two models whose groups share names and shapes get
    identical values there, whatever else they hold. Other parameters (not conv, linear
    or BatchNorm) get LeCun-uniform values too.
    """
    for name, module in (top_level_modules(model) if groups is None else groups).items():
        # The CPU generator keeps only 32 bits of its seed: hash seed and name together.
        generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}".encode()))
        for sub in module.modules():
            if isinstance(sub, (_ConvNd, nn.Linear)):
                bound = math.sqrt(3.0 / sub.weight[0].numel())
                _fill_uniform(sub.weight, -bound, bound, generator)
                if sub.bias is not None:
                    _fill_uniform(sub.bias, *_BIAS_RANGE, generator)
            elif isinstance(sub, _BatchNorm):
                for attr, (low, high) in _BN_RANGES.items():
                    if getattr(sub, attr, None) is not None:
                        _fill_uniform(getattr(sub, attr), low, high, generator)
                if sub.num_batches_tracked is not None:
                    sub.num_batches_tracked.zero_()
            else:
                for p in sub.parameters(recurse=False):
                    if p.is_floating_point():
                        bound = math.sqrt(3.0 / p[0].numel()) if p.dim() > 1 else _BIAS_RANGE[1]
                        _fill_uniform(p, -bound, bound, generator)
    return model
