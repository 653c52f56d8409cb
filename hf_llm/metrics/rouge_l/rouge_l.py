"""ROUGE-L F1 of predicted answers against reference answers, on lowercased whitespace tokens."""

import datasets
import evaluate

_DESCRIPTION = """
ROUGE-L: the longest common subsequence (LCS) of a prediction's and its reference's tokens gives
precision LCS / len(prediction) and recall LCS / len(reference); the score is their F1 (harmonic
mean), averaged over examples. Tokens are the lowercased text split on whitespace (no stemming, no
punctuation stripping). An empty prediction or reference scores 0, unless both are empty (1).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: the generated answers.
    references: the reference answers, one per prediction.
Returns:
    rouge_l: the mean ROUGE-L F1 over examples, between 0 and 1.
Examples:
    >>> metric = evaluate.load("hf_llm/metrics/rouge_l")
    >>> metric.compute(predictions=["the cat sat"], references=["The cat sat down"])
    {'rouge_l': 0.8571428571428571}
"""

_CITATION = """
@inproceedings{lin-2004-rouge,
  title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
  author = "Lin, Chin-Yew",
  booktitle = "Text Summarization Branches Out",
  year = "2004",
  publisher = "Association for Computational Linguistics",
  pages = "74--81",
}
"""


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence of `a` and `b` (dynamic programming, one row kept)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    predicted, wanted = prediction.lower().split(), reference.lower().split()
    if not predicted or not wanted:
        return float(not predicted and not wanted)
    common = lcs_length(predicted, wanted)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        if not predictions:
            raise ValueError("No predictions: ROUGE-L needs at least one prediction/reference pair.")
        return {"rouge_l": sum(rouge_l_f1(p, r) for p, r in zip(predictions, references)) / len(predictions)}
