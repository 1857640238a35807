"""rawnet2-harness: regression and equivalence harness for the RawNet2 variants, and any model
a team registers (``harness.register`` or ``[tool.rawnet2-harness.variants.NAME]``).

Every public name is loaded on first use, so that ``import harness`` (and ``python -m harness
score`` with a cached export) costs no ``import torch``.
"""

from __future__ import annotations

import importlib

from harness.core.errors import HarnessError

# public name -> module that defines it
_LAZY = {
    "SUBJECTS": "harness.rawnet2.registry",
    "VARIANT_INFO": "harness.rawnet2.registry",
    "VARIANTS": "harness.rawnet2.registry",
    "build": "harness.rawnet2.registry",
    "legacy_effective": "harness.rawnet2.registry",
    "audit": "harness.rawnet2.audits",
    "validate_input": "harness.rawnet2.inputs",
    "convert_state_dict": "harness.rawnet2.conversion",
    "get_audio_model": "harness.rawnet2.checkpoints",
    "copy_weights": "harness.rawnet2.transfer",
    "optimize_for_inference": "harness.core.forms",
    "flops": "harness.core.bench",
    "register": "harness.rawnet2.registry",
    "resolve": "harness.rawnet2.registry",
    "load_registry_file": "harness.rawnet2.registry",
    "load_project_registry": "harness.rawnet2.registry",
    "match_weights": "harness.core.matching",
    "compare_models": "harness.core.matching",
    "seed_weights": "harness.rawnet2.transfer",
}

__all__ = ["HarnessError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
