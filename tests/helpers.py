"""Helpers the test modules share: the team registries' paths, the registry restored after a test,
and a model whose forward branches on its input's values."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from harness.rawnet2.registry import SUBJECTS, register, unregister

TEAM_MODELS = Path(__file__).parent / "team_models"
# A production-style model unlike the family and two correct refactors; and two broken refactors.
TEAM_REGISTRY = TEAM_MODELS / "correct.toml"
BROKEN_REGISTRY = TEAM_MODELS / "broken.toml"


@contextmanager
def restored_registry() -> Iterator[None]:
    """Whatever the block registers, replaces or unregisters is undone afterwards, and sys.path
    restored (a registry file puts its directory there)."""
    before, path = dict(SUBJECTS), list(sys.path)
    try:
        yield
    finally:
        for name in set(SUBJECTS) - set(before):
            unregister(name)
        for spec in before.values():  # in registration order: a reference before what names it
            register(spec, replace=True)
        sys.path[:] = path


class PeakNormalised(nn.Module):
    """Audio louder than full scale is scaled to peak 1 first: a data-dependent branch, which a traced
    graph (ONNX) freezes the way its example input took it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 9)
        self.fc = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peak = x.abs().amax()
        if peak > 1:
            x = x / peak
        return torch.sigmoid(self.fc(torch.relu(self.conv(x)).mean(dim=-1)))
