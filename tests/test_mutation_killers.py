"""Contracts that mutation testing (``python -m harness mutate``) found no test holding.

Each test here kills mutants of ``fixed/skip_modules.py`` / ``fixed/basic_blocks.py`` that the
rest of the suite let survive, by a behaviour the model must have, never by its text. Test ids
carry the variant names, so the mutation run's ``-k NAME`` selection picks them up.

- **The backward is the gradient of the forward.** A ``.detach()`` on a path from the input to
  the output (``identity = x.detach()`` before a residual add) leaves every output bit-identical
  and every parameter a non-zero gradient: no output test and no ``gradient_coverage`` audit can
  see it, yet training follows another gradient. The input gradient of every variant the guide's
  functional reference vouches for must equal the reference's (autograd through plain
  ``F.conv1d`` / ``F.batch_norm`` from the same weights), and a variant held to a reference must
  have the reference's input gradient, in the modes where it must compute its function.
"""

from __future__ import annotations

import pytest
import torch

from harness.core.modes import MODES
from harness.core.tolerances import EXACT, REFERENCE_FORWARD, assert_close
from harness.rawnet2.equivalence import copy_weights, seed_weights
from harness.rawnet2.golden import reference_forward
from harness.rawnet2.registry import SUBJECTS

SEED = 1234
BATCH = 3
# The variants the guide's functional reference vouches for (their spec names the function).
VOUCHED = [name for name, spec in SUBJECTS.items() if spec.runs and spec.architecture is not None]
# (variant, its reference, a mode where it must compute the reference's function)
HELD = [(name, spec.reference, mode) for name, spec in SUBJECTS.items()
        if spec.runs and spec.reference is not None for mode in spec.reference_modes]


def waveforms(name: str) -> torch.Tensor:
    """A seeded batch of the variant's own input contract (its declared shape and length)."""
    return SUBJECTS[name].example(BATCH, seed=SEED)


def output_and_input_gradient(function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``function(x)`` and the gradient of a fixed random projection of it with respect to ``x``."""
    x = x.clone().requires_grad_(True)
    out = function(x)
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(SEED + 1))
    (out * projection).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", VOUCHED)
def test_input_gradient_is_the_gradient_of_the_guides_function(name: str, mode: str):
    spec = SUBJECTS[name]
    model = seed_weights(spec.build(), SEED).train(mode == "train")
    x = waveforms(name)
    # the reference first: a train-mode forward of the model moves its running statistics
    want_out, want_grad = output_and_input_gradient(
        lambda h: reference_forward(model, h, spec.architecture, train=mode == "train"), x)
    got_out, got_grad = output_and_input_gradient(model, x)
    assert_close(got_out, want_out, REFERENCE_FORWARD, f"{name} ({mode}): outputs")
    assert_close(got_grad, want_grad, REFERENCE_FORWARD,
                 f"{name} ({mode}): the backward is not the gradient of the forward's function")


@pytest.mark.parametrize("name, reference, mode", HELD, ids=[f"{n}-vs-{r}-{m}" for n, r, m in HELD])
def test_input_gradient_is_the_reference_variants(name: str, reference: str, mode: str):
    x = waveforms(reference)
    ref = seed_weights(SUBJECTS[reference].build(), SEED)
    model = SUBJECTS[name].build()
    copy_weights(ref, model, x, modes=(mode,))
    want_out, want_grad = output_and_input_gradient(ref.train(mode == "train"), x)
    got_out, got_grad = output_and_input_gradient(model.train(mode == "train"), x)
    assert_close(got_out, want_out, EXACT, f"{name} vs {reference} ({mode}): outputs")
    assert_close(got_grad, want_grad, EXACT, f"{name} vs {reference} ({mode}): input gradients")
