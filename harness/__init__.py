"""rawnet2-harness: regression and equivalence harness for the RawNet2 variants.

The registry is imported eagerly; the heavier tools are loaded on first use so that
``import harness`` stays cheap.
"""

from __future__ import annotations

import importlib

from harness.core.errors import HarnessError
from harness.variants import SUBJECTS, VARIANT_INFO, VARIANTS, build, legacy_effective

# public name -> module that defines it
_LAZY = {
    "audit": "harness.audits",
    "validate_input": "harness.inputs",
    "convert_state_dict": "harness.checkpoints",
    "get_audio_model": "harness.checkpoints",
    "copy_weights": "harness.equivalence",
    "optimize_for_inference": "harness.equivalence",
    "flops": "harness.bench",
}

__all__ = [
    "HarnessError",
    "SUBJECTS",
    "VARIANT_INFO",
    "VARIANTS",
    "build",
    "legacy_effective",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
