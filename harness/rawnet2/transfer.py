"""Moving weights between live RawNet2-family models.

* ``copy_weights(src, dst)`` moves every parameter and buffer: by canonical module between the
  guide's layouts (``harness.rawnet2.layouts``), by proven structural matching
  (``harness.core.matching``) between any others, on an example of the target's input contract.
* ``seed_weights(model, seed)`` gives every module deterministic random weights *and* BatchNorm
  statistics (``harness.core.weights``); modules with the same canonical name get the same
  values in every layout.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from harness.core.contract import InputContract
from harness.core.errors import HarnessError
from harness.core.matching import match_weights
from harness.core.weights import seed_weights as core_seed_weights
from harness.rawnet2.layouts import CANONICAL_LAYOUT, canonical_modules, has_guide_layout
from harness.rawnet2.registry import MODES, spec

# Examples in the batch the structural matching observes and proves on when the caller gives
# no input: two, so that train-mode BatchNorm sees more than one value per channel at any length.
MATCHING_BATCH = 2


def matching_input(contract: InputContract | None = None, seed: int = 0) -> torch.Tensor:
    """A seeded ``MATCHING_BATCH`` of ``contract``'s examples at its declared length (default:
    the contract of the guide's canonical layout, the built-in family's)."""
    contract = spec(CANONICAL_LAYOUT).input_contract() if contract is None else contract
    return contract.example(MATCHING_BATCH, seed=seed)


def copy_weights(src: nn.Module, dst: nn.Module, example_input: torch.Tensor | None = None,
                 *, contract: InputContract | None = None, modes: tuple[str, ...] = MODES) -> None:
    """Copy every parameter and buffer of ``src`` into ``dst``.

    Two models in the guide's layouts pair module by canonical module (tuple_blocks'
    unregistered tuple members included); any other pair is matched by structure
    (``harness.core.matching.match_weights``) and the pairing proven bit for bit in
    ``modes`` on ``example_input`` (default: ``matching_input(contract)``, where
    ``contract`` is ``dst``'s spec's input contract; a model outside the built-in family
    needs one or the other). Both models keep their own tensors (device and dtype of
    ``dst``). Raises ``HarnessError`` naming every module or tensor that has no
    counterpart, or where an unproven pairing parts; nothing is copied then.
    """
    if has_guide_layout(src) and has_guide_layout(dst):
        copy_canonical(src, dst)
        return
    match_weights(src, dst, matching_input(contract) if example_input is None else example_input, modes=modes)


def copy_canonical(src: nn.Module, dst: nn.Module) -> None:
    """Copy ``src`` into ``dst``, both in the guide's layouts, canonical module by canonical module;
    ``HarnessError`` naming every module, tensor or shape without a counterpart (nothing copied)."""
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


def seed_weights(model: nn.Module, seed: int) -> nn.Module:
    """``harness.core.weights.seed_weights``, grouped by canonical module where the model has the
    guide's layout, so every layout seeded alike holds identical values in the modules they share."""
    groups = canonical_modules(model) if has_guide_layout(model) else None
    return core_seed_weights(model, seed, groups)
