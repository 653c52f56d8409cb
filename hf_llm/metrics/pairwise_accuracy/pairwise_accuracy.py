"""Pairwise accuracy of a scorer (a reward model, or DPO's implicit reward) on chosen/rejected pairs."""

import math

import datasets
import evaluate

_DESCRIPTION = """
The share of preference pairs whose chosen answer scores strictly above its rejected one, and the
mean margin (chosen score minus rejected score), counted over pairs (not averaged over batches).

A tie counts as wrong: a scorer that cannot tell the answers apart has not preferred the chosen one
(an untrained DPO policy, equal to its reference, scores every pair 0 - 0 and so has accuracy 0).
"""

_KWARGS_DESCRIPTION = """
Args:
    chosen_scores: per pair, the chosen answer's score.
    rejected_scores: per pair, the rejected answer's score.
Returns:
    accuracy: share of pairs with chosen_score > rejected_score (ties are wrong).
    margin: mean of chosen_score - rejected_score.
    pairs: the number of pairs.
Examples:
    >>> metric = evaluate.load("hf_llm/metrics/pairwise_accuracy")
    >>> metric.compute(chosen_scores=[1.0, 0.0, 2.0], rejected_scores=[0.0, 0.0, 3.0])
    {'accuracy': 0.3333333333333333, 'margin': 0.0, 'pairs': 3}
"""

_CITATION = """
@article{bradley1952rank,
  title={Rank analysis of incomplete block designs: I. The method of paired comparisons},
  author={Bradley, Ralph Allan and Terry, Milton E.},
  journal={Biometrika}, volume={39}, number={3/4}, pages={324--345}, year={1952}
}
"""


class PairwiseAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"chosen_scores": datasets.Value("float64"), "rejected_scores": datasets.Value("float64")}
            ),
        )

    def _compute(self, chosen_scores, rejected_scores):
        if not chosen_scores:
            raise ValueError("No pairs: pairwise accuracy needs at least one chosen/rejected pair.")
        margins = [c - r for c, r in zip(chosen_scores, rejected_scores)]
        if not all(math.isfinite(m) for m in margins):
            raise ValueError("A score is NaN or infinite: the scorer's output cannot be compared.")
        return {
            "accuracy": sum(m > 0 for m in margins) / len(margins),
            "margin": math.fsum(margins) / len(margins),
            "pairs": len(margins),
        }
