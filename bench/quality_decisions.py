"""bench/quality's choices between methods (issue #31's protocol): what each may look at, the
rules, and the decisions of one run, each with the data it looked at."""

from __future__ import annotations

import statistics

# What a choice between methods may look at (issue #31's protocol): the training site's
# same-scene hold-out and the reverse direction, never the site a direction is tested on.
SELECTION_DATA = (("wyoming_to_california", "same_scene"), ("california_to_wyoming", "other_site"))
NEVER_SELECTED_ON = (("wyoming_to_california", "other_site"),)


# How the method is chosen (written after quality-levers.json, for the runs after it): the
# best selection score, but the default stays unless the best beats it by more than the noise
# of the selection data, the larger of the two methods' seed spreads (mean over the data).
MARGIN_RULE = ("the best mean of medians on the selection data; the default stays unless the "
               "best beats it by more than the larger of the two methods' seed spreads there")


# Test-time flips and the seed ensemble (written after quality-unlabeled-threshold.json, which
# took both for gains of 0.009 and 0.008 where the seeds' spread was 0.055).
OPTION_RULE = ("with the option when it beats the method without it by more than the method's "
               "seed spread on the selection data")


def decisions(trees: dict, candidates: list[str]) -> list[dict]:
    """The choices this run makes, each with the data it looked at: the method (MARGIN_RULE),
    then whether test-time flips and a seed ensemble help it, all on `SELECTION_DATA` only
    (mean of the medians)."""
    def score(method: str, key: str = "auc_median") -> float:
        return round(statistics.mean(trees[direction][method][scored][key]
                                     for direction, scored in SELECTION_DATA), 4)

    looked_at = [f"trees {direction} {scored}" for direction, scored in SELECTION_DATA]
    never = [f"trees {direction} {scored}" for direction, scored in NEVER_SELECTED_ON]
    scores = {method: score(method) for method in candidates}
    best = max(scores, key=scores.get)
    decision = {"decision": "the method", "rule": MARGIN_RULE, "looked_at": looked_at,
                "never_looked_at": never, "scores": scores}
    if "default" in scores and best != "default":
        margin = round(max(score(best, "auc_spread"), score("default", "auc_spread")), 4)
        decision.update(best=best, margin=margin)
        if scores[best] - scores["default"] <= margin:
            best = "default"
    found = [{**decision, "chosen": best}]
    for option, key in (("test-time flips", "tta_auc_median"), ("seed ensemble",
                                                                "ensemble_auc")):
        if all(key in trees[d][best][s] for d, s in SELECTION_DATA):
            with_it = score(best, key)
            # as for the method: taken only when it gains more than the seeds' spread there
            margin = score(best, "auc_spread")
            found.append({"decision": f"{option} for {best}", "rule": OPTION_RULE,
                          "looked_at": looked_at, "never_looked_at": never,
                          "scores": {"without": scores[best], "with": with_it},
                          "margin": margin,
                          "chosen": "with" if with_it - scores[best] > margin else "without"})
    return found
