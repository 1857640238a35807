"""Where two RawNet2 variants compute the same function.

* ``copy_weights(src, dst)`` moves every parameter and buffer between live models of
  any two layouts (``harness.rawnet2.layouts.canonical_modules`` names them), tuple_blocks'
  unregistered tuple members included.
* ``seed_weights(model, seed)`` gives every canonical module deterministic random
  weights *and* BatchNorm statistics (default init's mean 0 / var 1 would hide
  folding bugs); modules with the same canonical name get the same values in every
  layout.
* ``compare_variants`` measures the differences the report prints and the tests bound.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from harness.core.errors import HarnessError
from harness.core.forms import max_differences
from harness.rawnet2.layouts import canonical_modules
from harness.rawnet2.registry import SUBJECTS, build

# --- weights -------------------------------------------------------------------------------


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy every parameter and buffer of ``src`` into ``dst``, module by canonical module.

    Both models keep their own tensors (device and dtype of ``dst`` are kept; values
    are copied in place). Raises ``HarnessError`` naming every module or tensor that
    has no counterpart or a different shape; nothing is copied then.
    """
    src_modules, dst_modules = canonical_modules(src), canonical_modules(dst)
    problems = []
    if missing := [n for n in src_modules if n not in dst_modules]:
        problems.append(f"the target has no module for {', '.join(missing)}")
    if unfilled := [n for n in dst_modules if n not in src_modules]:
        problems.append(f"the source has no module for {', '.join(unfilled)}")
    pairs = []
    for name in (n for n in src_modules if n in dst_modules):
        src_state = src_modules[name].state_dict(keep_vars=True)
        dst_state = dst_modules[name].state_dict(keep_vars=True)
        for key in sorted(src_state.keys() ^ dst_state.keys()):
            side = "target" if key in src_state else "source"
            problems.append(f"the {side} has no tensor {name}.{key}")
        for key in (k for k in src_state if k in dst_state):
            s, d = src_state[key], dst_state[key]
            if s.shape != d.shape:
                problems.append(f"{name}.{key} has shape {tuple(s.shape)} in the source "
                                f"but {tuple(d.shape)} in the target")
            else:
                pairs.append((s, d))
    if problems:
        raise HarnessError("cannot copy weights between these layouts: " + "; ".join(problems))
    with torch.no_grad():
        for s, d in pairs:
            d.copy_(s)


# Ranges for seed_weights: conv/linear weights keep unit activation variance (LeCun
# uniform), so outputs stay input-dependent through 13 conv layers instead of
# collapsing to the biases or saturating the sigmoid; BN values are kept away from
# the identity (weight 1, bias 0, mean 0, var 1) so that folding is really exercised.
_BIAS_RANGE = (-0.1, 0.1)
_BN_RANGES = {
    "weight": (0.5, 1.5),
    "bias": (-0.2, 0.2),
    "running_mean": (-0.2, 0.2),
    "running_var": (0.5, 2.0),
}


def _fill_uniform(tensor: torch.Tensor, low: float, high: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


def seed_weights(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every weight and BatchNorm statistic of ``model`` from ``seed``; returns ``model``.

    Each canonical module draws from its own generator (seeded by ``seed`` and its
    canonical name), so two layouts seeded alike hold identical values in the modules
    they share, whatever else they hold. Uses the CPU Mersenne twister only, so the
    values are the same on every platform.
    """
    for name, module in canonical_modules(model).items():
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
                    _fill_uniform(getattr(sub, attr), low, high, generator)
                sub.num_batches_tracked.zero_()
    return model


# --- measured differences ------------------------------------------------------------------


@dataclass(frozen=True)
class VariantDifference:
    """Outputs of two variants holding the same weights, on the same input."""

    a: str
    b: str
    mode: str  # "train" or "eval"
    weights: str  # how b got a's weights: "copy_weights" or a convert_state_dict policy
    input_shape: tuple[int, ...]
    max_abs: float
    max_rel: float

    @property
    def identical(self) -> bool:
        return self.max_abs == 0.0


def shared_weights(a: str, b: str, seed: int) -> tuple[nn.Module, nn.Module, str]:
    """Variant ``a`` with seeded weights and variant ``b`` holding the same function's weights.

    Layouts that hold the same modules share them through ``copy_weights``; otherwise
    ``a``'s state_dict is converted to ``b`` under the ``preserve-function`` policy.
    """
    model_a, model_b = seed_weights(build(a), seed), build(b)
    if canonical_modules(model_a).keys() == canonical_modules(model_b).keys():
        copy_weights(model_a, model_b)
        return model_a, model_b, "copy_weights"
    from harness.rawnet2.checkpoints import convert_state_dict

    state, _ = convert_state_dict(model_a.state_dict(), SUBJECTS[b].checkpoint_layout,
                                  source=SUBJECTS[a].checkpoint_layout, policy="preserve-function")
    model_b.load_state_dict(state)
    return model_a, model_b, "preserve-function"


def compare_variants(a: str, b: str, mode: str, *, seed: int = 0, x: torch.Tensor | None = None,
                     ) -> VariantDifference:
    """Max difference between variants ``a`` and ``b`` holding the same weights, in ``mode``.

    The default input is three seeded 4000-sample waveforms.
    """
    if mode not in ("train", "eval"):
        raise HarnessError(f"mode must be 'train' or 'eval', not {mode!r}")
    if x is None:
        x = torch.randn(3, 1, 4000, generator=torch.Generator().manual_seed(seed))
    model_a, model_b, how = shared_weights(a, b, seed)
    with torch.no_grad():
        out_a = model_a.train(mode == "train")(x)
        out_b = model_b.train(mode == "train")(x)
    return VariantDifference(a, b, mode, how, tuple(x.shape), *max_differences(out_a, out_b))

