"""The report's "decisions" section: does a fix or a deployment form change a single decision?

On a labelled corpus (the bundled fixture corpus, ``harness.rawnet2.corpus``, or a team's
``--protocol``/``--audio-root``) each variant is scored next to its reference holding the same
weights, and each deployment form next to its eager form; the decisions are taken at the
first one's EER threshold on that corpus (``harness.core.decisions``), so a form's max abs
score difference reads next to how many decisions it flips.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from harness.core.contract import InputContract
from harness.core.decisions import clear_threshold, decision_flips
from harness.core.errors import HarnessError, error_line
from harness.core.forms import DEPLOYMENT_FORMS
from harness.core.metrics import MetricError, compute_eer
from harness.core.protocols import Protocol, audio_files, read_protocol
from harness.rawnet2.audio import load_clip
from harness.rawnet2.corpus import BUNDLED_AUDIO, build_corpus
from harness.rawnet2.deploy import deployment_model
from harness.rawnet2.equivalence import copy_weights, seed_weights, shared_weights
from harness.rawnet2.registry import VariantSpec, in_family, spec
from harness.rawnet2.score_command import scoring_contract
from harness.rawnet2.score_request import INT8_FORM

Progress = Callable[[str], None]
# Bona fide clips (and as many of each attack) in the bundled corpus the report builds (--quick: fewer).
CORPUS_PER_CLASS, QUICK_CORPUS_PER_CLASS = 4, 2
# A quick report (CI) cuts every clip to the variant's declared length: seconds, not minutes.
# Clips per forward: a team's corpus is scored a batch at a time.
DECISION_BATCH = 32
# Forms a quick report leaves out of this section (the equivalence section still compares them).
QUICK_SKIPS = {"onnxruntime": "--quick: an ONNX export takes seconds per variant"}


@dataclass(frozen=True)
class LabelledAudio:
    """What the decisions are taken on."""

    name: str
    files: tuple[str, ...]
    utterances: tuple[str, ...]
    is_bonafide: np.ndarray


def bundled_corpus(directory: Path, per_class: int = CORPUS_PER_CLASS) -> LabelledAudio:
    corpus = build_corpus(directory, per_class=per_class)
    return team_corpus(str(corpus.protocol), str(corpus.directory),
                       name=f"the bundled fixture corpus ({len(corpus.utterances)} clips: the recordings in "
                            f"{BUNDLED_AUDIO.name}/ and transformed copies)")


def team_corpus(protocol_path: str, audio_root: str | None, *, name: str | None = None) -> LabelledAudio:
    protocol: Protocol = read_protocol(protocol_path)
    files = audio_files(protocol, audio_root)
    return LabelledAudio(name or f"{protocol_path} ({protocol.kind})", tuple(files), protocol.utterances,
                         np.asarray(protocol.is_bonafide, dtype=bool))


def decisions_section(subjects: Sequence[str], *, quick: bool, forms: Sequence[str],
                      progress: Progress, protocol: str | None = None, audio_root: str | None = None,
                      compile_backend: str = "inductor", int8: bool = False) -> dict:
    """``{"corpus", "n", "rows", "not_run"}``: flips of each variant vs its reference and of each of
    ``forms`` vs eager (with ``int8``, the onnxruntime-int8 form's too), per runnable subject with a
    score transform."""
    with tempfile.TemporaryDirectory(prefix="harness-corpus-") as tmp:
        audio = (team_corpus(protocol, audio_root) if protocol is not None
                 else bundled_corpus(Path(tmp) / "corpus",
                                     QUICK_CORPUS_PER_CLASS if quick else CORPUS_PER_CLASS))
        rows, not_run = [], []
        for name in subjects:
            variant = spec(name)
            if not variant.runs or variant.score_transform is None:
                continue
            x = corpus_clips(variant, audio, quick)
            reference = _held_to(variant)
            if reference is not None:
                progress(f"decisions: {name} vs {reference}")
                try:
                    ref_model, model, how = _paired_models(reference, name, next(iter(x)))
                    rows.append(flips_between(reference, name, "variant", how, ref_model, model,
                                              spec(reference), variant, x, audio))
                except HarnessError as exc:
                    not_run.append(f"decisions {name} vs {reference}: {exc}")
            model = seed_weights(variant.build_or_refuse(), 0).eval()
            for form in (f for f in forms if f in variant.forms):
                if quick and form in QUICK_SKIPS:
                    not_run.append(f"decisions {name} {form} ({QUICK_SKIPS[form]})")
                    continue
                progress(f"decisions: {name} eager vs its {form} form")
                try:
                    rows.append(_form_row(name, form, model, variant, x, audio, compile_backend))
                except Exception as exc:  # noqa: BLE001 - a form that fails is reported, not fatal here
                    not_run.append(f"decisions {name} {form}: {error_line(exc)}")
            if "onnxruntime" in variant.forms:
                if not int8:
                    not_run.append(f"decisions {name} {INT8_FORM} (--quick: quantizing takes seconds)")
                    continue
                progress(f"decisions: {name} eager vs its {INT8_FORM} form")
                try:
                    session, _ = deployment_model(model, variant, INT8_FORM, "cpu")
                    rows.append(flips_between(name, f"{name} ({INT8_FORM})", "form", INT8_FORM, model,
                                              session, variant, variant, x, audio))
                except Exception as exc:  # noqa: BLE001 - as above
                    not_run.append(f"decisions {name} {INT8_FORM}: {error_line(exc)}")
    return {"corpus": audio.name, "n": len(audio.files), "n_bonafide": int(audio.is_bonafide.sum()),
            "n_spoof": int((~audio.is_bonafide).sum()), "quick": quick, "rows": rows, "not_run": not_run}


def _held_to(variant: VariantSpec) -> str | None:
    """The variant it is held to: its declared reference, else (in the family) the canonical layout."""
    from harness.rawnet2.layouts import CANONICAL_LAYOUT

    if variant.reference is not None:
        return variant.reference
    if in_family(variant) and variant.name != CANONICAL_LAYOUT:
        return CANONICAL_LAYOUT
    return None


def _paired_models(ref: str, name: str, x: torch.Tensor) -> tuple[nn.Module, nn.Module, str]:
    if in_family(spec(ref)) and in_family(spec(name)):
        # Seeded as the variant and carried into the reference, as the equivalence section does: a
        # legacy function moves into the canonical layout, not the other way.
        model, ref_model, how = shared_weights(name, ref, 0, x[:2])
        return ref_model.eval(), model.eval(), how
    ref_spec, other = spec(ref), spec(name)
    ref_model = ref_spec.build_or_refuse()
    if ref_spec.weights is None:
        seed_weights(ref_model, 0)
    model = other.build_or_refuse()
    copy_weights(ref_model, model, contract=other.input_contract())
    return ref_model.eval(), model.eval(), "structural match (proven)"


class _Clips:
    """The corpus at one variant's input, a batch at a time (a team's corpus may not fit in memory)."""

    def __init__(self, files: Sequence[str], contract: InputContract, length: int) -> None:
        self.files, self.contract, self.length = files, contract, length

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.files), DECISION_BATCH):
            chunk = self.files[start:start + DECISION_BATCH]
            clips = torch.from_numpy(np.stack([load_clip(f, self.length) for f in chunk]))
            yield clips.reshape(self.contract.batch_shape(len(chunk), self.length))


def corpus_clips(variant: VariantSpec, audio: LabelledAudio, quick: bool) -> _Clips:
    """Every clip at the variant's scoring length (its declared one under --quick), in its layout."""
    contract = scoring_contract(variant)
    length = variant.input_contract().length if quick else contract.length
    return _Clips(audio.files, contract, max(length, contract.min_length))


def _oriented(output: object, variant: VariantSpec) -> np.ndarray:
    transform = variant.score_transform
    scores = transform(output).detach().double().cpu().numpy()
    return -scores if transform.means == "spoof" else scores


def flips_between(a: str, b: str, kind: str, how: str, model_a: Callable, model_b: Callable,
                  spec_a: VariantSpec, spec_b: VariantSpec, x: _Clips, audio: LabelledAudio) -> dict:
    """``a`` and ``b`` (models or forms, each scored through its spec's transform) on every clip of
    ``x``: the report's row, flips at ``a``'s EER threshold on ``audio`` moved clear of its scores."""
    parts_a, parts_b = [], []
    with torch.no_grad():
        for batch in x:
            parts_a.append(_oriented(model_a(batch), spec_a))
            parts_b.append(_oriented(model_b(batch), spec_b))
    return _flips_row(a, b, kind, how, np.concatenate(parts_a), np.concatenate(parts_b), audio)


def _form_row(name: str, form: str, model: nn.Module, variant: VariantSpec, x: _Clips,
              audio: LabelledAudio, compile_backend: str) -> dict:
    eager, formed, ran = [], [], form
    with torch.no_grad():
        for batch in x:
            eager.append(_oriented(model(batch), variant))
            output, ran = DEPLOYMENT_FORMS[form].run(model, batch, compile_backend)
            formed.append(_oriented(output.float().cpu(), variant))
    return _flips_row(name, f"{name} ({ran or form})", "form", form, np.concatenate(eager),
                      np.concatenate(formed), audio)


def _flips_row(a: str, b: str, kind: str, how: str, scores_a: np.ndarray, scores_b: np.ndarray,
               audio: LabelledAudio) -> dict:
    bona = audio.is_bonafide
    try:
        eer_a, threshold = compute_eer(scores_a[bona], scores_a[~bona])
        eer_b, _ = compute_eer(scores_b[bona], scores_b[~bona])
    except MetricError as exc:
        raise HarnessError(f"no EER on {audio.name}: {exc}") from None
    threshold = clear_threshold(scores_a, threshold)  # a's EER decisions, no score of a on the boundary
    flips = decision_flips(a, scores_a, b, scores_b, threshold, audio.utterances, bona).as_json()
    flipped = [f["file"] for f in flips["files"]]
    return {"a": a, "b": b, "kind": kind, "how": how, "threshold": float(threshold), "n": len(scores_a),
            "flips": flips["flips"], "bonafide_to_spoof": flips["bonafide_to_spoof"],
            "spoof_to_bonafide": flips["spoof_to_bonafide"],
            "max_abs_score_diff": flips["max_abs_score_diff"],
            "eer_a": float(eer_a), "eer_b": float(eer_b), "flipped": flipped,
            "margin": float(np.min(np.abs(scores_a - threshold)))}
