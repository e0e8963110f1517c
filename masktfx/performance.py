"""Performance of a binary classifier from its scores: with labels (AUC), and without them,
estimated from probabilities calibrated on labelled data.

The estimate is confidence-based performance estimation (CBPE, as NannyML names it): once the
probabilities are calibrated, probability p of a region is the chance its label is 1, so the
expected confusion matrix at any threshold, and with it the expected ROC curve and accuracy, follow
from the scores alone. It assumes that what the calibration learned still holds on the new data
(the relation between score and label does not change, only the images): where the model is
confidently wrong it overestimates, which bench/quality measures and the README states.

Calibration is Platt scaling on the logit of the score (two numbers, fitted by Newton's method on
the validation split), which keeps the ranking and so the AUC of the scores it is applied to; and
`fit_auc_matched`, Platt's fit sharpened until CBPE's AUC on the validation split is the measured
one (which the pipeline's estimates use: bench/reliability says why).
Pure NumPy: the Trainer fits, the DriftCheck and `masktfx drift` estimate.
"""

from __future__ import annotations

import math

import numpy as np

_EPSILON = 1e-6


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); NaN with
    one class only."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = labels == 1
    count_pos, count_neg = int(positives.sum()), int((~positives).sum())
    if count_pos == 0 or count_neg == 0:
        return math.nan
    return expected_auc(scores, positives.astype(np.float64))


def expected_auc(scores: np.ndarray, positive_chance: np.ndarray) -> float:
    """The AUC of `scores` when region i is positive with probability `positive_chance[i]`
    (0/1 chances: the AUC itself). Each pair (i, j) counts with weight p_i (1 - p_j), a score
    above counting 1 and a tie one half; NaN when no pair has weight."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    chance = np.clip(np.asarray(positive_chance, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if len(scores) < 2:
        return math.nan
    # sum over pairs of p_i (1 - p_j) [s_i > s_j] (+ half on ties), through ranks: for each i,
    # the (1 - p)-weight of the regions below it, ties counted half
    order = np.argsort(scores, kind="mergesort")
    negative_weight = 1.0 - chance
    below = np.cumsum(negative_weight[order]) - negative_weight[order]  # strictly before in order
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    before_tie = np.repeat(below[starts], ends - starts)  # weight of strictly lower scores
    tie_weight = np.repeat(np.add.reduceat(negative_weight[order], starts), ends - starts)
    own = negative_weight[order]
    wins = before_tie + 0.5 * (tie_weight - own)  # a region is not its own pair
    numerator = float(np.sum(chance[order] * wins))
    denominator = float(chance.sum() * negative_weight.sum() - np.sum(chance * negative_weight))
    if denominator <= 0:
        return math.nan
    return numerator / denominator


def expected_accuracy(scores: np.ndarray, positive_chance: np.ndarray, threshold: float
                      ) -> float:
    """The expected share of right labels at `threshold` (label 1 when score >= threshold)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    chance = np.asarray(positive_chance, dtype=np.float64).reshape(-1)
    if not len(scores):
        return math.nan
    return float(np.mean(np.where(scores >= threshold, chance, 1.0 - chance)))


def _logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, dtype=np.float64), _EPSILON, 1.0 - _EPSILON)
    return np.log(clipped) - np.log1p(-clipped)


def fit_calibration(labels: np.ndarray, scores: np.ndarray, iterations: int = 50
                    ) -> dict[str, float]:
    """Platt scaling: {"slope", "intercept"} of P(label 1) = sigmoid(slope logit(s) + intercept),
    fitted by Newton's method with a small ridge (so separable data keeps a finite slope).
    Identity ({"slope": 1, "intercept": 0}) when the labels hold one class only."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if len(np.unique(labels)) < 2:
        return {"slope": 1.0, "intercept": 0.0}
    design = np.stack([_logit(scores), np.ones(len(labels))], axis=1)
    prior = np.array([1.0, 0.0])
    ridge = np.diag([1e-3, 1e-6]) * len(labels)

    def loss(weights: np.ndarray) -> float:
        z = design @ weights
        # -log-likelihood of the labels, in a form that does not overflow
        return float(np.sum(np.logaddexp(0.0, z) - labels * z)
                     + 0.5 * (weights - prior) @ ridge @ (weights - prior))

    weights = prior.copy()
    current = loss(weights)
    for _ in range(iterations):
        chance = 0.5 * (1.0 + np.tanh(0.5 * (design @ weights)))  # the sigmoid, overflow-free
        gradient = design.T @ (chance - labels) + ridge @ (weights - prior)
        hessian = (design * (chance * (1.0 - chance))[:, None]).T @ design + ridge
        step = np.linalg.solve(hessian, gradient)
        # damped Newton: halve the step until the loss goes down
        for _ in range(30):
            candidate = weights - step
            found = loss(candidate)
            if found <= current:
                break
            step = step / 2.0
        else:
            break
        weights, improvement, current = candidate, current - found, found
        if improvement < 1e-12 * max(1.0, abs(current)):
            break
    return {"slope": float(weights[0]), "intercept": float(weights[1])}


def fit_auc_matched(labels: np.ndarray, scores: np.ndarray, base: dict[str, float]
                    ) -> dict[str, float]:
    """A sharper or softer `base` calibration whose CBPE AUC on these labelled scores equals
    their measured AUC: P(label 1) = sigmoid(s (logit(score) - c)), c the score `base` calls
    even, s found by bisection (the expected AUC grows with s, from 0.5 at s = 0). Platt's fit
    spends its two numbers on the likelihood, and on a small validation split its probabilities
    can be softer than the ranking is good, which makes CBPE's AUC low; this keeps the AUC
    estimate right where it can be checked. `base` unchanged when the AUC is undefined, or 1
    (perfectly separated regions say nothing of how sharp to be: any slope past some point
    matches, up to a step that would estimate an AUC near 1 on any data)."""
    measured = auc(labels, scores)
    if math.isnan(measured) or measured >= 1.0 or abs(base["slope"]) < 1e-12:
        return dict(base)
    centre = -base["intercept"] / base["slope"]
    logits = _logit(scores)

    def estimated(slope: float) -> float:
        return expected_auc(scores, 0.5 * (1.0 + np.tanh(0.5 * slope * (logits - centre))))

    low, high = 1e-3, 1e3
    if estimated(high) <= measured:
        slope = high
    elif estimated(low) >= measured:
        slope = low
    else:
        for _ in range(60):  # bisection in log space
            middle = math.sqrt(low * high)
            low, high = (middle, high) if estimated(middle) < measured else (low, middle)
        slope = math.sqrt(low * high)
    return {"slope": float(slope), "intercept": float(-slope * centre)}


def calibrate(scores: np.ndarray, calibration: dict[str, float]) -> np.ndarray:
    """The calibrated probability of each score."""
    z = calibration["slope"] * _logit(scores) + calibration["intercept"]
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def estimate(scores: np.ndarray, calibration: dict[str, float], threshold: float,
             groups: np.ndarray | None = None, resamples: int = 200, seed: int = 0
             ) -> dict:
    """CBPE's AUC and accuracy of unlabelled regions' scores, with a 95% bootstrap interval
    over the regions' groups (each region its own group when `groups` is None). The interval is
    the sampling error of the estimate only, not the error of its assumption."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    chance = calibrate(scores, calibration)
    found = {"method": "cbpe", "regions": int(len(scores)),
             "auc": expected_auc(scores, chance),
             "accuracy": expected_accuracy(scores, chance, threshold),
             "threshold": float(threshold)}
    if len(scores) < 2:
        found["interval"] = {"auc": [math.nan, math.nan], "accuracy": [math.nan, math.nan]}
        return found
    members = group_members(groups, len(scores))
    rng = np.random.default_rng(seed)
    draws = {"auc": [], "accuracy": []}
    for _ in range(resamples):
        picked = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        draws["auc"].append(expected_auc(scores[picked], chance[picked]))
        draws["accuracy"].append(expected_accuracy(scores[picked], chance[picked], threshold))
    found["interval"] = {name: percentile_interval(values) for name, values in draws.items()}
    found["groups"] = len(members)
    return found


def group_members(groups: np.ndarray | None, count: int) -> list[np.ndarray]:
    """The region indices of each group (each region its own group when `groups` is None)."""
    if groups is None:
        return [np.array([index]) for index in range(count)]
    _, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1, count]
    return [order[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def percentile_interval(values: list[float]) -> list[float]:
    """[2.5th, 97.5th] percentile of the finite values (NaN, NaN when there are none)."""
    finite = np.array([value for value in values if not math.isnan(value)])
    if not finite.size:
        return [math.nan, math.nan]
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]
