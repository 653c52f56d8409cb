"""Mean loss over the response (completion) tokens of prompt + response examples."""

import math

import datasets
import evaluate

_DESCRIPTION = """
Token-weighted mean negative log-likelihood of responses given their prompts: the loss supervised
fine-tuning minimises, over completion tokens only (prompt tokens are context, not predicted).

Each example brings the sum of its completion tokens' negative log-likelihoods (natural log) and how
many there were. The loss is sum(nll) / sum(tokens), exactly.
"""

_KWARGS_DESCRIPTION = """
Args:
    nll: per example, the summed negative log-likelihood (nats) of its completion tokens.
    tokens: per example, the number of completion tokens (0 or more; at least one in all).
Returns:
    response_loss: sum(nll) / sum(tokens).
    tokens: sum(tokens).
Examples:
    >>> metric = evaluate.load("hf_llm/metrics/response_loss")
    >>> metric.compute(nll=[3.0, 1.0], tokens=[3, 1])
    {'response_loss': 1.0, 'tokens': 4}
"""


class ResponseLoss(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"nll": datasets.Value("float64"), "tokens": datasets.Value("int64")}),
        )

    def _compute(self, nll, tokens):
        if any(n < 0 for n in tokens):
            raise ValueError("tokens must be counts (0 or more).")
        total = sum(tokens)
        if total == 0:
            raise ValueError("No completion token: the response loss needs at least one.")
        return {"response_loss": math.fsum(nll) / total, "tokens": total}
