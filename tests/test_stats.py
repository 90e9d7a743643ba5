"""toolkit.stats: the intervals and the paired test every comparison uses, against values computed
independently (scipy's own functions called differently, or textbook values)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolkit.core import stats


def test_wilson_interval_of_exp6_accuracy():
    ci = stats.accuracy_interval(9259, 10_000)
    # About ±0.5 points at 92.6% on 10,000 images, as the issue says.
    assert ci.estimate == 0.9259 and ci.method == "wilson"
    assert ci.low == pytest.approx(0.92060, abs=1e-5) and ci.high == pytest.approx(0.93087, abs=1e-5)
    # The Wilson formula written out, as a cross-check of the library call.
    z, p, n = 1.959963984540054, 0.9259, 10_000
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert ci.low == pytest.approx(centre - half, abs=1e-9)
    assert ci.high == pytest.approx(centre + half, abs=1e-9)
    exact = stats.accuracy_interval(9259, 10_000, method="exact")  # Clopper-Pearson is a little wider
    assert exact.low <= ci.low and exact.high >= ci.high
    assert stats.interval_of_accuracy(0.9259, 10_000) == ci
    with pytest.raises(ValueError):
        stats.accuracy_interval(5, 0)


def test_mcnemar_exact_on_discordant_pairs():
    from scipy.stats import binom

    a = np.ones(1000, dtype=bool)
    b = a.copy()
    b[:10] = False  # A right, B wrong on 10 images
    a[10:11] = False  # B right, A wrong on 1
    test = stats.mcnemar(a, b)
    assert (test.only_a, test.only_b, test.discordant) == (10, 1, 11)
    # Exact two-sided: twice the lower tail of Binomial(11, 1/2) at 1.
    assert test.p_value == pytest.approx(2 * binom.cdf(1, 11, 0.5))
    assert test.significant and test.a_better()
    same = stats.mcnemar(a, a)
    assert same.p_value == 1.0 and not same.significant  # no discordant pair: nothing to separate
    one_image = stats.mcnemar(a, np.r_[a[:-1], ~a[-1:]])
    assert one_image.p_value == 1.0  # one or two images never separate two models
    with pytest.raises(ValueError):
        stats.mcnemar(a, a[:5])


def test_paired_predictions_use_the_labels():
    labels = np.array([0, 1, 2, 3, 4, 5])
    a = np.array([0, 1, 2, 3, 4, 0])  # 5 right
    b = np.array([0, 1, 2, 3, 0, 5])  # 5 right, on other images
    test = stats.paired_predictions(a, b, labels)
    assert (test.only_a, test.only_b) == (1, 1) and test.p_value == 1.0


def test_t_interval_and_seed_spread():
    ci = stats.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) x s / sqrt(n)
    assert ci.estimate == 2.0 and ci.low == pytest.approx(2 - half) and ci.high == pytest.approx(2 + half)
    assert ci.contains(2.5) and not ci.contains(7.0)
    assert stats.t_interval([0.5]) is None  # one process has no spread
    assert stats.t_interval([0.5, 0.5]).low == 0.5  # identical measurements: a point
    # On the log scale (timings): geometric mean, positive bounds, a slow outlier widens upwards.
    log = stats.t_interval([1.0, 2.0, 4.0], log=True)
    assert log.estimate == pytest.approx(2.0) and log.method == "t, log scale"
    assert log.low == pytest.approx(2 / 2**half) and log.high == pytest.approx(2 * 2**half)
    assert stats.t_interval([0.5, 0.6, 9.0]).low < 0 < stats.t_interval([0.5, 0.6, 9.0], log=True).low
    assert stats.t_interval([0.0, 1.0], log=True) is None  # a zero time has no logarithm
    spread = stats.seed_spread([0.90, 0.91, 0.92])
    assert spread.mean == pytest.approx(0.91) and spread.std == pytest.approx(0.01) and spread.n == 3
    assert stats.seed_spread([0.9]).std is None and stats.seed_spread([]) is None


def test_formatting():
    assert stats.fmt_p(0.0001) == "<0.001" and stats.fmt_p(0.25) == "0.250" and stats.fmt_p(None) == "-"
    ci = stats.accuracy_interval(9259, 10_000)
    assert stats.fmt_interval(ci) == "0.9259 [0.9206, 0.9309]"
    assert stats.fmt_pm(stats.t_interval([1.0, 2.0, 3.0]), ".2f") == "2.00 ± 2.48"
    assert stats.fmt_range(2.0, stats.t_interval([1.0, 2.0, 4.0], log=True), ".2f") == "2.00 (0.36-11.19)"
    assert stats.fmt_range(2.0, None, ".2f") == "2.00" and stats.fmt_range(None, None) == "-"
