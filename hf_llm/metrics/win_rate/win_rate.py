"""Win rate of a policy's answers against a reference's, judged by a reward model's scores."""

import math

import datasets
import evaluate

_DESCRIPTION = """
For each prompt, the judge's reward for the policy's answer and for the reference model's answer.
Reports the mean reward of each and the win rate: the share of prompts where the policy's answer
scores higher, a tie counting as half a win (so two identical models have win rate 0.5).
"""

_KWARGS_DESCRIPTION = """
Args:
    rewards: per prompt, the judge's reward for the policy's answer.
    reference_rewards: per prompt, the judge's reward for the reference model's answer.
Returns:
    win_rate: (wins + ties / 2) / prompts.
    mean_reward: mean of rewards.
    reference_mean_reward: mean of reference_rewards.
    prompts: the number of prompts.
Examples:
    >>> metric = evaluate.load("hf_llm/metrics/win_rate")
    >>> metric.compute(rewards=[1.0, 0.0, -1.0, 2.0], reference_rewards=[0.0, 0.0, 0.0, 1.0])
    {'win_rate': 0.625, 'mean_reward': 0.5, 'reference_mean_reward': 0.25, 'prompts': 4}
"""


class WinRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"rewards": datasets.Value("float64"), "reference_rewards": datasets.Value("float64")}
            ),
        )

    def _compute(self, rewards, reference_rewards):
        if not rewards:
            raise ValueError("No prompts: the win rate needs at least one pair of answers.")
        if not all(math.isfinite(r) for r in [*rewards, *reference_rewards]):
            raise ValueError("A reward is NaN or infinite: the judge's output cannot be compared.")
        wins = sum(r > q for r, q in zip(rewards, reference_rewards))
        ties = sum(r == q for r, q in zip(rewards, reference_rewards))
        n = len(rewards)
        return {
            "win_rate": (wins + ties / 2) / n,
            "mean_reward": math.fsum(rewards) / n,
            "reference_mean_reward": math.fsum(reference_rewards) / n,
            "prompts": n,
        }
