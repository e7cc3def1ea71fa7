"""The default promise: correct the threshold search's selection effect with a shrunk target.

Choosing the cheapest thresholds whose validation accuracy reaches a target picks, among many
candidates, those that were lucky on these images: on new images their accuracy is lower on
average (measured: about 1-2 points with 600 validation images, more near the top of the front,
and more again after the exact local polish, which searches many more thresholds). So the default
aims higher: at the target plus ``SHRINK`` standard errors of a validation accuracy,
sqrt(a (1 - a) / n), on the front of the quantile-grid search without the polish. The margin
shrinks as validation grows, as the optimism does.

Why not cross-fitting: estimating the optimism by choosing on 4/5 of the images and scoring on the
rest measured it about twice too high (the out-of-fold scores of 120 images are noisy, and a
correction must not fall where the noise dips), so it gave up more speed for the same promise
(bench/results/promise.md). Pure numpy: no torch, no printing.
"""

from __future__ import annotations

import math

# Standard errors added to the target: the smallest that kept the mean shortfall on fresh data
# <= 0.5 point at every target up to the best exit's accuracy in simulation (tests/test_promise.py).
SHRINK = 1.0


def aimed_accuracy(target: float, n: int) -> float:
    """The validation accuracy the default calibration aims at so that ``target`` holds on new data."""
    a = min(max(target, 0.0), 1.0)
    return target + SHRINK * math.sqrt(a * (1.0 - a) / max(n, 1))
