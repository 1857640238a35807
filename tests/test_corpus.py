"""The fixture corpus (``harness.rawnet2.corpus``) and its stand-in detector (``band_energy``,
``tests/team_models/band_detector.py``): the corpus is the same bytes every build and its protocol
lists every clip with its label; the stand-in's scores fall in the order the construction argues,
so its EERs are the ones hand arithmetic gives from the counts alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.__main__ import main
from harness.core.metrics import compute_eer, per_attack_eer
from harness.core.protocols import BONAFIDE_ATTACK, KIND_2019, audio_files, read_protocol
from harness.core.tolerances import BATCHING, assert_close
from harness.rawnet2.audio import load_clip
from harness.rawnet2.corpus import (
    ATTACKS,
    BONAFIDE,
    CLIP_SAMPLES,
    MAX_PER_CLASS,
    NO_ATTACK,
    PROTOCOL_NAME,
    SPOOF,
    BandLimit,
    Corpus,
    build_corpus,
)
from harness.rawnet2.inputs import NUM_SAMPLES, SAMPLE_RATE
from harness.rawnet2.registry import load_registry_file
from harness.rawnet2.score_command import scoring_contract
from harness.rawnet2.scoring import score_files
from tests.helpers import CORPUS_REGISTRY, refusal, restored_registry
from tests.team_models import band_detector

STAND_IN = "band_energy"
# The stand-in's score order on the corpus, lowest group first, as band_detector.py argues it.
SCORE_ORDER = (("LP", "TL"), (NO_ATTACK,), ("NZ",))


def tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --- the corpus -----------------------------------------------------------------------------------


def test_two_builds_write_the_same_bytes(fixture_corpus: Corpus, tmp_path: Path) -> None:
    again = build_corpus(tmp_path / "again")
    assert tree(again.directory) == tree(fixture_corpus.directory)
    assert (again.utterances, again.labels, again.attacks) == (
        fixture_corpus.utterances, fixture_corpus.labels, fixture_corpus.attacks)


def test_the_protocol_lists_every_clip_with_its_label(fixture_corpus: Corpus) -> None:
    rows = [line.split(" ") for line in fixture_corpus.protocol.read_text("ascii").splitlines()]
    assert all(len(row) == 5 and row[2] == "-" for row in rows)
    assert tuple(row[1] for row in rows) == fixture_corpus.utterances
    assert tuple(row[3] for row in rows) == fixture_corpus.attacks
    assert tuple(row[4] for row in rows) == fixture_corpus.labels
    assert all((label == BONAFIDE) == (attack == NO_ATTACK) for attack, label in zip(
        fixture_corpus.attacks, fixture_corpus.labels, strict=True))
    assert sorted(os.listdir(fixture_corpus.directory)) == sorted(
        [PROTOCOL_NAME, *(f"{utt}.wav" for utt in fixture_corpus.utterances)])
    # the harness's own protocol reader takes it as ASVspoof 2019 and finds every clip
    protocol = read_protocol(fixture_corpus.protocol)
    assert protocol.kind == KIND_2019
    assert protocol.utterances == fixture_corpus.utterances
    assert protocol.is_bonafide.tolist() == [label == BONAFIDE for label in fixture_corpus.labels]
    assert protocol.attacks == tuple(BONAFIDE_ATTACK if a == NO_ATTACK else a for a in fixture_corpus.attacks)
    assert audio_files(protocol, str(fixture_corpus.directory)) == [str(f) for f in fixture_corpus.files]


def test_every_clip_is_one_second_of_16k_mono_pcm16_the_family_reads(fixture_corpus: Corpus) -> None:
    for path in fixture_corpus.files:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (
            SAMPLE_RATE, 1, CLIP_SAMPLES, "PCM_16"), path.name
    # the RawNet2 family reads 64,600 samples: a 1 s clip is repeated end to end
    clip = load_clip(fixture_corpus.files[0])
    assert clip.shape == (NUM_SAMPLES,)
    np.testing.assert_array_equal(clip[CLIP_SAMPLES:2 * CLIP_SAMPLES], clip[:CLIP_SAMPLES])


@settings(max_examples=5, deadline=None)
@given(per_class=st.integers(1, 6))
def test_per_class_clips_of_each_class_and_attack(per_class: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        corpus = build_corpus(Path(directory) / "c", per_class=per_class)
        assert Counter(corpus.attacks) == {NO_ATTACK: per_class, **{a: per_class for a in ATTACKS}}
        assert Counter(corpus.labels) == {BONAFIDE: per_class, SPOOF: per_class * len(ATTACKS)}
        assert len(set(corpus.utterances)) == len(corpus.utterances)
        assert all(utt.replace("_", "").isalnum() for utt in corpus.utterances)


def test_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    message = refusal(lambda: build_corpus(tmp_path))
    assert str(tmp_path) in message and "not empty" in message and "'notes.txt'" in message
    assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("per_class", [0, -1, MAX_PER_CLASS + 1, True, "8"])
def test_refuses_a_per_class_that_is_not_a_count(tmp_path: Path, per_class: object) -> None:
    assert "per_class" in refusal(lambda: build_corpus(tmp_path / "c", per_class=per_class))
    assert not (tmp_path / "c").exists()


def test_refuses_a_file_for_a_directory_and_sources_without_recordings(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert "is not a directory" in refusal(lambda: build_corpus(tmp_path / "file"))
    (tmp_path / "empty").mkdir()
    message = refusal(lambda: build_corpus(tmp_path / "c", sources=tmp_path / "empty"))
    assert str(tmp_path / "empty") in message and "no source recording" in message
    assert not (tmp_path / "c").exists()


# --- the stand-in's scores, and the EERs they must give -----------------------------------------


@pytest.fixture(scope="module")
def stand_in_scores(fixture_corpus: Corpus) -> np.ndarray:
    """band_energy's score of every corpus clip, in protocol order, through the scoring path."""
    with restored_registry():
        spec = next(s for s in load_registry_file(CORPUS_REGISTRY) if s.name == STAND_IN)
        results = score_files(spec.build().eval(), [str(f) for f in fixture_corpus.files], workers=0,
                              contract=scoring_contract(spec), transform=spec.score_transform)
    assert [r.error for r in results] == [None] * len(results)
    return np.array([r.score for r in results])


def test_every_attack_has_its_place_in_the_argued_order() -> None:
    placed = [attack for group in SCORE_ORDER for attack in group]
    assert sorted(placed) == sorted([NO_ATTACK, *ATTACKS])


def test_the_stand_in_filter_stops_what_the_band_limited_attacks_keep() -> None:
    # the first half of band_detector.py's argument: LP and TL keep nothing above 3.5 kHz
    band_limits = {attack: t for attack, (_, t) in ATTACKS.items() if isinstance(t, BandLimit)}
    assert set(band_limits) == set(SCORE_ORDER[0])
    assert max(t.high_hz for t in band_limits.values()) <= band_detector.STOPBAND_EDGE_HZ
    gains = [band_detector.stopband_gain_db(f) for f in np.arange(0.0, band_detector.STOPBAND_EDGE_HZ, 10.0)]
    assert max(gains) < band_detector.STOPBAND_GAIN_DB


def test_the_stand_in_scores_fall_in_the_constructed_order(fixture_corpus: Corpus,
                                                         stand_in_scores: np.ndarray) -> None:
    attacks = np.array(fixture_corpus.attacks)
    groups = [stand_in_scores[np.isin(attacks, group)] for group in SCORE_ORDER]
    assert all(((0 <= g) & (g <= 1)).all() for g in groups)
    for k in range(len(groups) - 1):
        low, high = groups[k], groups[k + 1]
        assert low.max() < high.min(), (f"{SCORE_ORDER[k]} reaches {low.max()}, above {SCORE_ORDER[k + 1]}'s "
                                        f"lowest {high.min()}")


def eer_by_sweep(bonafide_ranks_low_to_high: list[bool]) -> tuple[Fraction, Fraction, int]:
    """The official EER's definition on a ranking with no ties, by brute force in exact fractions:
    cut after the lowest k (k = 0..n: everything up to the cut rejected); pmiss = bona fide below
    the cut / bona fide, pfa = spoofs above it / spoofs; the first cut where |pmiss - pfa| is least.
    ``(pmiss, pfa, k)`` there."""
    n_bona = sum(bonafide_ranks_low_to_high)
    n_spoof = len(bonafide_ranks_low_to_high) - n_bona
    cuts = []
    for k in range(len(bonafide_ranks_low_to_high) + 1):
        below = bonafide_ranks_low_to_high[:k]
        pmiss = Fraction(sum(below), n_bona)
        pfa = Fraction(n_spoof - (k - sum(below)), n_spoof)
        cuts.append((abs(pmiss - pfa), k, pmiss, pfa))
    _, k, pmiss, pfa = min(cuts)
    return pmiss, pfa, k


def constructed_ranking(fixture_corpus: Corpus, attacks: tuple[str, ...]) -> list[bool]:
    """Bona fide or not, lowest score first, from the counts and SCORE_ORDER alone (no score read)."""
    count = Counter(fixture_corpus.attacks)
    return [attack == NO_ATTACK for group in SCORE_ORDER for attack in group if attack in attacks
            for _ in range(count[attack])]


def test_the_eers_by_hand_from_the_counts(fixture_corpus: Corpus) -> None:
    # 8 bona fide; 16 LP and TL spoofs below them, 8 NZ above. Cutting after the 16 low spoofs and
    # then k bona fide: pmiss = k/8, pfa = 8/24 = 1/3; |k/8 - 1/3| is least at k = 3 (1/24), so
    # EER = (3/8 + 1/3) / 2 = 17/48, at the third-lowest bona fide score.
    pmiss, pfa, cut = eer_by_sweep(constructed_ranking(fixture_corpus, (NO_ATTACK, *ATTACKS)))
    assert (pmiss + pfa) / 2 == Fraction(17, 48) and cut == 16 + 3
    # each band-limited attack: all 8 below every bona fide clip, separated: EER 0
    for attack in ("LP", "TL"):
        pmiss, pfa, _ = eer_by_sweep(constructed_ranking(fixture_corpus, (NO_ATTACK, attack)))
        assert (pmiss, pfa) == (0, 0)
    # NZ: all 8 above every bona fide clip; the first cut where pmiss = pfa is after all bona fide
    # (pmiss 1, pfa 1): the official definition gives EER 1.0, not 0.5
    pmiss, pfa, _ = eer_by_sweep(constructed_ranking(fixture_corpus, (NO_ATTACK, "NZ")))
    assert (pmiss, pfa) == (1, 1)


def test_the_stand_in_scores_give_the_constructed_eers(fixture_corpus: Corpus,
                                                       stand_in_scores: np.ndarray) -> None:
    is_bonafide = np.array(fixture_corpus.labels) == BONAFIDE
    attacks = np.array(fixture_corpus.attacks)
    bona, spoof = stand_in_scores[is_bonafide], stand_in_scores[~is_bonafide]
    # the scores' own ranking is the constructed one
    order = np.argsort(stand_in_scores, kind="stable")
    pmiss, pfa, cut = eer_by_sweep(is_bonafide[order].tolist())
    assert (pmiss, pfa, cut) == eer_by_sweep(constructed_ranking(fixture_corpus, (NO_ATTACK, *ATTACKS)))
    # harness.core.metrics agrees, in the official float arithmetic, and puts the threshold at the
    # third-lowest bona fide score
    eer, threshold = compute_eer(bona, spoof)
    assert eer == (float(pmiss) + float(pfa)) / 2
    assert threshold == np.sort(bona)[2]
    per_attack = {}
    for attack in ATTACKS:
        sweep = eer_by_sweep(constructed_ranking(fixture_corpus, (NO_ATTACK, attack)))
        per_attack[attack] = ((float(sweep[0]) + float(sweep[1])) / 2, int(np.sum(attacks == attack)))
    assert per_attack_eer(stand_in_scores, is_bonafide, fixture_corpus.attacks) == per_attack


def test_the_stand_in_scores_through_the_cli(fixture_corpus: Corpus, stand_in_scores: np.ndarray,
                                             capsys: pytest.CaptureFixture) -> None:
    with restored_registry():
        files = [str(f) for f in fixture_corpus.files[:2]]
        assert main(["--registry", str(CORPUS_REGISTRY), "score", *files, "--variant", STAND_IN,
                     "--form", "eager", "--format", "json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert (scored["variant"], scored["score_means"]) == (STAND_IN, "bonafide")
    assert [row["file"] for row in scored["results"]] == files
    # a batch of 2 here, of 8 in stand_in_scores
    assert_close(torch.tensor([row["score"] for row in scored["results"]], dtype=torch.float64),
                 torch.from_numpy(stand_in_scores[:2]), BATCHING)


@pytest.mark.slow  # 2.4 s: every generic check builds and runs the model several times
def test_the_stand_in_passes_its_audit() -> None:
    # a parameter-free model: no gradient to cover, nothing to load; every other check passes
    with restored_registry():
        assert main(["--registry", str(CORPUS_REGISTRY), "audit", STAND_IN]) == 0
