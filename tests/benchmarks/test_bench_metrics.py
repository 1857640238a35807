"""Metric benchmark: EER, both min t-DCFs and per-attack EER on an ASVspoof-sized score set.

600,000 CM scores (10 % bona fide, 13 attacks, scores rounded to 4 decimals so ties occur as in
printed score files) against fixed ASV error rates: what ``evaluate`` computes per system. The
metrics are O(n log n), one stable sort per DET curve (pooled EER, each t-DCF, each attack).

A plain ``pytest`` run computes them once, untimed, on 6,000 scores; ``make bench`` times the
600,000.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.core.metrics import asv_error_rates, compute_eer, min_tdcf, per_attack_eer

N_SCORES = 600_000
SMOKE_SCORES = 6_000
ATTACKS = tuple(f"A{i:02d}" for i in range(7, 20))  # 13 attacks, the ASVspoof 2019 LA eval's A07-A19


def scored_protocol(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(scores, is_bonafide, attacks)``: every 10th utterance bona fide, the rest spread over ATTACKS,
    each attack a little easier than the last."""
    rng = np.random.default_rng(seed)
    is_bonafide = np.arange(n) % 10 == 0
    which = rng.integers(0, len(ATTACKS), n)
    scores = np.where(is_bonafide, rng.normal(2.0, 1.0, n), rng.normal(-0.1 * which, 1.0, n)).round(4)
    attacks = np.where(is_bonafide, "-", np.asarray(ATTACKS)[which]).tolist()
    return scores, is_bonafide, attacks


@pytest.mark.benchmark(group="metrics")
def test_metrics(benchmark) -> None:
    timed = not benchmark.disabled
    n = N_SCORES if timed else SMOKE_SCORES
    scores, is_bonafide, attacks = scored_protocol(n)
    bona, spoof = scores[is_bonafide], scores[~is_bonafide]
    rng = np.random.default_rng(1)
    asv = asv_error_rates(target=rng.normal(3.0, 1.0, 5_000), nontarget=rng.normal(0.0, 1.0, 5_000),
                          spoof=rng.normal(2.0, 1.0, 5_000))

    def every_metric() -> tuple:
        return (compute_eer(bona, spoof), min_tdcf(bona, spoof, asv, "2021"),
                min_tdcf(bona, spoof, asv, "2019"), per_attack_eer(scores, is_bonafide, attacks))

    (eer, _), (tdcf_2021, _), (tdcf_2019, _), per_attack = benchmark(every_metric)
    benchmark.extra_info.update(n_scores=n, n_bonafide=int(bona.size), n_attacks=len(per_attack), eer=eer,
                                min_tdcf_2021=tdcf_2021, min_tdcf_2019=tdcf_2019)
    if timed:
        benchmark.extra_info["seconds_median"] = benchmark.stats.stats.median

    assert list(per_attack) == sorted(ATTACKS)
    assert sum(count for _, count in per_attack.values()) == spoof.size
    assert 0.0 < eer < 0.5 and 0.0 < tdcf_2021 <= 1.0 and 0.0 < tdcf_2019 <= 1.0
    # The attacks get easier with their index (spoof scores shift down): their EERs fall.
    eers = [per_attack[name][0] for name in ATTACKS]
    assert eers[0] > eers[-1]
