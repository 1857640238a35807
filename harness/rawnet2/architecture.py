"""The RawNet2 architecture as the fix guide describes it, written out as data.

The golden functional reference (``harness.rawnet2.golden.reference_forward``) recomputes
a model's outputs from these numbers and the model's weights alone, never from the
model's modules; a variant's spec (``harness.rawnet2.registry``) says which function of
this family it computes (``ReferenceSpec``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

CONV1 = (1, 32)  # in, out channels; kernel 3, stride 1, padding 1
# (in_channels, out_channels, stride) of res_block1..6; kernel 3, padding 1
BLOCKS = ((32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2))
LEAKY_SLOPE = 0.3
BN_EPS = 1e-5  # nn.BatchNorm1d's default; the guide sets none

IDENTITY, PROJECTION, NONE = "identity", "projection", "none"
# Every block's shortcut as the guide's fixes wire it: a projection where the shape changes.
GUIDE_SHORTCUTS: Mapping[int, str] = MappingProxyType(
    {i: PROJECTION if stride != 1 or cin != cout else IDENTITY
     for i, (cin, cout, stride) in enumerate(BLOCKS, start=1)})


@dataclass(frozen=True)
class ReferenceSpec:
    """Which function of the family a variant computes: each block's shortcut, and which
    canonical modules' BatchNorms use batch statistics even in eval mode."""

    shortcuts: Mapping[int, str] = field(default_factory=lambda: GUIDE_SHORTCUTS)
    eval_batch_statistics: frozenset[str] = frozenset()

