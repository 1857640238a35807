"""The registry of model variants under test: name -> factory, with what we know of each.

``VARIANTS`` holds exactly the models as found (``legacy``) and as the fix guide
proposed them (``tuple_blocks``, ``skip_modules``). ``legacy_effective`` is the
function the legacy forward computes once its shared ``skip`` is cleared by hand:
the closest thing to "what production ran" and the reference for checkpoint
migration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch.nn as nn

from fixed.skip_modules import RawNet2 as SkipModulesRawNet2
from fixed.tuple_blocks import RawNet2 as TupleBlocksRawNet2
from harness.core.errors import HarnessError
from legacy.rawnet2 import RawNet2 as LegacyRawNet2

Factory = Callable[..., nn.Module]


def legacy_effective(num_classes: int = 1) -> nn.Module:
    """The legacy model with ``skip`` cleared: the only way its forward runs.

    Blocks 1/3/5 then add an identity shortcut and blocks 2/4/6 add none.
    """
    model = LegacyRawNet2(num_classes=num_classes)
    model.skip = None
    return model


@dataclass(frozen=True)
class Variant:
    name: str
    factory: Factory
    description: str
    source: str
    # check name -> why this variant is expected to fail it (see harness.core.audits)
    expected_defects: Mapping[str, str] = field(default_factory=dict)
    # The state_dict layout its checkpoints have (harness.rawnet2.layouts.LAYOUTS); None: its own name.
    layout: str | None = None

    @property
    def checkpoint_layout(self) -> str:
        return self.layout or self.name


_VARIANT_INFO = (
    Variant(
        name="legacy",
        factory=LegacyRawNet2,
        description="original model: one shared self.skip juggled between blocks",
        source="legacy/rawnet2.py",
        # A fresh instance's forward raises before any block output exists, so every check
        # that needs a forward fails; registration (no forward) passes.
        expected_defects={
            check: "forward raises RuntimeError: the shared skip is block 6's 128->256 projection, "
                   "applied to block 1's 32-channel input"
            for check in ("mode_propagation", "device_transfer", "state_dict_roundtrip", "batch_independence",
                          "gradient_coverage", "determinism", "output_contract", "skip_wiring")
        },
    ),
    Variant(
        name="tuple_blocks",
        factory=TupleBlocksRawNet2,
        description="fix guide 'Proposed Solution': blocks held as (main, skip) tuples",
        source="fixed/tuple_blocks.py",
        expected_defects={
            "registration": "blocks are plain (main, skip) tuples: their 51 modules and 564,480 parameters "
                            "are not registered",
            "mode_propagation": "eval()/train() do not reach the tuple members: 15 BatchNorms keep "
                                "their mode",
            "device_transfer": ".to() moves registered tensors only: every block weight and running "
                               "statistic stays behind",
            "state_dict_roundtrip": "the state_dict has 11 keys (conv1, fc1, fc2): no block weight or "
                                    "running statistic is saved",
            "batch_independence": "the block BatchNorms stay in training mode after eval(), so every sample "
                                  "is normalised with the statistics of the whole batch",
            "gradient_coverage": "the forward uses 581,185 parameters, model.parameters() holds 16,705: an "
                                 "optimizer never updates the blocks",
        },
    ),
    Variant(
        name="skip_modules",
        factory=SkipModulesRawNet2,
        description="fix guide 'Alternative Implementation': one skipN module per block",
        source="fixed/skip_modules.py",
    ),
)

# Forms of a variant that are audited and compared but are not variants themselves.
_DERIVED_INFO = (
    Variant(
        name="legacy_effective",
        factory=legacy_effective,
        description="legacy with skip cleared by hand: identity on blocks 1/3/5, no shortcut on 2/4/6",
        source="harness/variants.py",
        layout="legacy",
        expected_defects={
            "skip_wiring": "blocks 2/4/6 change shape and add no shortcut at all: their output is the "
                           "main path alone",
        },
    ),
)

VARIANT_INFO: Mapping[str, Variant] = MappingProxyType({v.name: v for v in _VARIANT_INFO})
VARIANTS: Mapping[str, Factory] = MappingProxyType({v.name: v.factory for v in _VARIANT_INFO})
# Everything the audit and the report cover: the variants plus their derived forms.
SUBJECTS: Mapping[str, Variant] = MappingProxyType(
    {v.name: v for v in (*_VARIANT_INFO, *_DERIVED_INFO)}
)


def build(name: str, num_classes: int = 1) -> nn.Module:
    """Build a fresh instance of a registered variant (or derived form) by name."""
    try:
        factory = SUBJECTS[name].factory
    except KeyError:
        known = ", ".join(SUBJECTS)
        raise HarnessError(f"unknown variant {name!r}; known: {known}") from None
    return factory(num_classes=num_classes)
