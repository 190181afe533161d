"""Confidence intervals for closed-loop success rates.

* `wilson(k, n)`: Wilson score interval for one success rate (good coverage at small n and at 0 % / 100 %,
  unlike the normal "Wald" interval).
* `paired_difference(pairs)`: accelerated-minus-baseline success on the *same seeds*. Interval: Newcombe's
  hybrid score interval for a difference of paired proportions (Newcombe 1998, Stat. Med. 17:2635,
  method 10): it combines the Wilson intervals of both rates and corrects for their correlation with the
  phi coefficient of the 2x2 table of pairs, using Newcombe's shrunken phi (ad - bc reduced by n/2 when
  positive, 0 when that crosses 0 or a margin is empty).
  Pairing matters: when both policies fail/succeed on the same hard/easy seeds, the paired interval is much
  narrower than comparing two independent Wilson intervals.
  Also reported: the exact two-sided McNemar p-value (binomial test on the discordant pairs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (lower, upper) for `successes` out of `n`; (0, 1) when n == 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} / {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return lower, upper


def paired_table(pairs: Iterable[tuple[bool, bool]]) -> tuple[int, int, int, int]:
    """Counts (both, only_new, only_base, neither) from (new_success, base_success) pairs."""
    a = b = c = d = 0
    for new, base in pairs:
        if new and base:
            a += 1
        elif new:
            b += 1
        elif base:
            c += 1
        else:
            d += 1
    return a, b, c, d


def newcombe_paired(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float, float]:
    """(delta, lower, upper) for p_new - p_base from the paired 2x2 table.

    a: both succeed, b: only the new policy succeeds, c: only the baseline succeeds, d: both fail.
    """
    n = a + b + c + d
    if n == 0:
        return 0.0, -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if denom == 0:
        phi = 0.0
    elif cross > n / 2:  # Newcombe's correction of phi towards 0 for positive association
        phi = (cross - n / 2) / math.sqrt(denom)
    elif cross >= 0:
        phi = 0.0
    else:
        phi = cross / math.sqrt(denom)
    delta = p1 - p2
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    lower = delta - math.sqrt(max(0.0, dl1**2 - 2 * phi * dl1 * du2 + du2**2))
    upper = delta + math.sqrt(max(0.0, du1**2 - 2 * phi * du1 * dl2 + dl2**2))
    return delta, max(-1.0, lower), min(1.0, upper)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(pairs: Iterable[tuple[bool, bool]], z: float = Z95) -> dict:
    """Paired comparison of (new_success, base_success) pairs -> JSON-ready dict."""
    a, b, c, d = paired_table(pairs)
    delta, lo, hi = newcombe_paired(a, b, c, d, z)
    return {
        "n_pairs": a + b + c + d,
        "delta": delta,
        "ci95": [lo, hi],
        "both": a,
        "only_new": b,
        "only_baseline": c,
        "neither": d,
        "mcnemar_p": mcnemar_exact(b, c),
        "method": "newcombe-paired-score",
    }
