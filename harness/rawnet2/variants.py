"""The built-in variants: the fix guide's models as found (``legacy``), as proposed
(``tuple_blocks``, ``skip_modules``), the idiomatic fix (``basic_blocks``) and
``legacy_effective``, the legacy model with its shared ``skip`` cleared (the only way its
forward runs: what production really ran).
"""

from __future__ import annotations

from types import MappingProxyType

import torch.nn as nn

from fixed.basic_blocks import RawNet2 as BasicBlocksRawNet2
from fixed.skip_modules import RawNet2 as SkipModulesRawNet2
from fixed.tuple_blocks import RawNet2 as TupleBlocksRawNet2
from harness.rawnet2.architecture import NONE, PROJECTION, ReferenceSpec
from harness.rawnet2.spec import VariantSpec
from legacy.rawnet2 import RawNet2 as LegacyRawNet2


def without_shared_skip(model: nn.Module) -> nn.Module:
    """``model`` (a legacy-layout RawNet2) with its shared ``skip`` cleared, as its forward's first
    call leaves it: blocks 1/3/5 then add an identity shortcut and blocks 2/4/6 add none."""
    model.skip = None
    return model


def legacy_effective(num_classes: int = 1) -> nn.Module:
    """The legacy model with ``skip`` cleared: the only way its forward runs (``without_shared_skip``)."""
    return without_shared_skip(LegacyRawNet2(num_classes=num_classes))


# The family's input contract: [B, 1, T], any T >= 1 for a batch of two (a batch of one needs
# T >= 9 in train mode, harness.rawnet2.inputs.min_train_length); 1000 samples keep the gate fast
# and give every check what 4000 or 16000 give (each block sees >= 125 positions).
FAMILY_CONTRACT = {"input_shape": (1, 1000), "min_length": 1}

_LEGACY_FORWARD_RAISES = ("forward raises RuntimeError: the shared skip is block 6's 128->256 projection, "
                          "applied to block 1's 32-channel input")

BUILT_IN = (
    VariantSpec(
        name="legacy",
        **FAMILY_CONTRACT,
        factory=LegacyRawNet2,
        description="original model: one shared self.skip juggled between blocks",
        source="legacy/rawnet2.py",
        # A fresh instance's forward raises before any block output exists, so every check
        # that needs a forward fails; registration (no forward) passes.
        expected_defects={
            check: _LEGACY_FORWARD_RAISES
            for check in ("mode_propagation", "device_transfer", "state_dict_roundtrip", "batch_independence",
                          "gradient_coverage", "determinism", "output_contract", "skip_wiring")
        },
        runs=False,
        forms=(),
        layout="legacy",
    ),
    VariantSpec(
        name="tuple_blocks",
        **FAMILY_CONTRACT,
        factory=TupleBlocksRawNet2,
        description="fix guide 'Proposed Solution': blocks held as (main, skip) tuples",
        source="fixed/tuple_blocks.py",
        # eval() never reaches the blocks' BatchNorms, so only train mode computes the reference's function.
        reference="skip_modules",
        reference_modes=("train",),
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
        forms=(),
        layout="tuple_blocks",
        architecture=ReferenceSpec(
            eval_batch_statistics=frozenset(
                {f"res_block{i}" for i in range(1, 7)} | {"skip2", "skip4", "skip6"}),
        ),
    ),
    VariantSpec(
        name="skip_modules",
        **FAMILY_CONTRACT,
        factory=SkipModulesRawNet2,
        description="fix guide 'Alternative Implementation': one skipN module per block",
        source="fixed/skip_modules.py",
        layout="skip_modules",
        architecture=ReferenceSpec(),
    ),
    VariantSpec(
        name="basic_blocks",
        **FAMILY_CONTRACT,
        factory=BasicBlocksRawNet2,
        description="idiomatic fix: torchvision BasicBlock idiom, shortcut owned and added by each block",
        source="fixed/basic_blocks.py",
        reference="skip_modules",
    ),
    VariantSpec(
        name="legacy_effective",
        **FAMILY_CONTRACT,
        factory=legacy_effective,
        description="legacy with skip cleared by hand: identity on blocks 1/3/5, no shortcut on 2/4/6",
        source="harness/rawnet2/variants.py",
        expected_defects={
            "skip_wiring": "blocks 2/4/6 change shape and add no shortcut at all: their output is the "
                           "main path alone",
        },
        layout="legacy",
        architecture=ReferenceSpec(MappingProxyType(
            {i: (NONE if s == PROJECTION else s) for i, s in ReferenceSpec().shortcuts.items()})),
        derived=True,
    ),
)
