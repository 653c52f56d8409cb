"""Perplexity of text (or the response loss of instructions) from per-example summed negative
log-likelihoods and token counts."""

import math

import datasets
import evaluate

_DESCRIPTION = """
Token-weighted mean negative log-likelihood of text and its exponential, the perplexity.

Each example brings the sum of its tokens' negative log-likelihoods (natural log) and the number of
tokens predicted. The loss is sum(nll) / sum(tokens), exactly: a short example weighs by its tokens,
not as much as a long one. Counting only the response tokens of prompt + response examples (the prompt
is context, not predicted), `loss` is the response loss supervised fine-tuning minimises.
"""

_KWARGS_DESCRIPTION = """
Args:
    nll: per example, the summed negative log-likelihood (nats) of its predicted tokens.
    tokens: per example, how many tokens were predicted (0 or more; at least one in all).
Returns:
    loss: sum(nll) / sum(tokens).
    perplexity: exp(loss) (infinite when exp overflows).
    tokens: sum(tokens).
Examples:
    >>> metric = evaluate.load("hf_llm/metrics/perplexity")
    >>> metric.compute(nll=[2.0, 1.0], tokens=[2, 1])
    {'loss': 1.0, 'perplexity': 2.718281828459045, 'tokens': 3}
"""


class Perplexity(evaluate.Metric):
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
            raise ValueError("No token was predicted: perplexity needs at least one token.")
        loss = math.fsum(nll) / total
        return {"loss": loss, "perplexity": math.exp(loss) if loss < 709 else math.inf, "tokens": total}
