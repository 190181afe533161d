"""Confidence intervals against hand-computed and published values."""

import math

import pytest

from vlaccel.sim.stats import mcnemar_exact, newcombe_paired, paired_difference, wilson

pytestmark = pytest.mark.sim


def test_wilson_hand_computed():
    # 7/10: centre = (0.7 + z^2/20) / (1 + z^2/10), half = z sqrt(0.021 + z^2/400) / (1 + z^2/10)
    z2 = 1.959963984540054**2
    centre = (0.7 + z2 / 20) / (1 + z2 / 10)
    half = math.sqrt(z2) * math.sqrt(0.7 * 0.3 / 10 + z2 / 400) / (1 + z2 / 10)
    lo, hi = wilson(7, 10)
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)
    assert (round(lo, 4), round(hi, 4)) == (0.3968, 0.8922)
    assert wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="need 0 <= successes <= n, got 3 / 2"):
        wilson(3, 2)


def test_newcombe_paired_matches_published_example():
    # Cavo et al. 2012 table used in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency
    # Tables", ch. 8: 59 both, 6 / 16 discordant, 80 neither -> -0.0621 (95% CI -0.1186 to -0.0046).
    delta, lo, hi = newcombe_paired(59, 6, 16, 80)
    assert (round(delta, 4), round(lo, 4), round(hi, 4)) == (-0.0621, -0.1186, -0.0046)


def test_paired_difference_degenerate_and_symmetric():
    same = paired_difference([(True, True)] * 10)
    assert same["delta"] == 0 and same["ci95"][0] < 0 < same["ci95"][1] and same["mcnemar_p"] == 1.0
    up = paired_difference([(True, False)] * 5 + [(True, True)] * 5)
    down = paired_difference([(False, True)] * 5 + [(True, True)] * 5)
    assert up["delta"] == 0.5 and up["ci95"][0] > 0
    assert down["ci95"] == pytest.approx([-up["ci95"][1], -up["ci95"][0]])
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
