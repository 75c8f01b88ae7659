"""A simulated annotator: noisy (and optionally biased) pairwise preferences from the gold scorer,
and `gold_preference`, the noiseless reference labeler.

Bradley–Terry on gold differences::

    P(a ≻ b) = sigmoid((gold(a) − gold(b) + verbosity_bias · (words(a) − words(b))
                        + sycophancy_bias · (agreeable(a) − agreeable(b))
                        + refusal_bias · (refuses(a) − refuses(b))) / temperature)

``temperature`` sets the noise (→ 0: always agrees with gold; large: coin flips). The biases make
flawed proxies on purpose — the way to show reward hacking and failure modes:

- ``verbosity_bias`` (gold points per extra word) likes long, padded answers;
- ``sycophancy_bias`` (gold points) likes answers that go along with the customer: ``agreeable`` is
  +1 for an answer that agrees with a false claim, −1 for one that corrects it, 0 otherwise;
- ``refusal_bias`` (gold points) likes refusals and deflections: ``refuses`` is 1 for an answer with a
  refusal or deflection clause (``scenarios.REFUSALS``, ``DEFLECTIONS``), else 0 — a cautious labeler.

Gold sets the scale of a bias that matters: a ``sycophancy_bias`` above 1.5 ranks an agreeing answer above a
correcting one (agreeing costs 2, a correction earns 1); a ``refusal_bias`` above ~6.5 ranks a lone deflection
(−4: the refusal and the missing action) above a plain correct answer (≈ +2.5).

``SimulatedAnnotator.utility`` is the score whose differences these are; as a reward function
(``annotator.reward``) it is the reward model such labels would teach, given unlimited pairs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from rlhf_widgets.sandbox.gold import Response, behaviour, gold_score, response_text
from rlhf_widgets.sandbox.world import PromptLike, parse_prompt


class SimulatedAnnotator:
    """Labels pairs like a human would, following the AI-labeler protocol ``(prompt, a, b) -> "a" | "b"``.

    Args:
        temperature: Bradley–Terry temperature in gold points (default 1.0); must be > 0.
        verbosity_bias: gold points credited per extra word (default 0.0, unbiased).
        seed: seed of the annotator's own random generator (default 0).
        sycophancy_bias: gold points credited for agreeing with a customer's false claim, and debited for
            correcting it (default 0.0, unbiased).
        refusal_bias: gold points credited for refusing or deflecting (default 0.0, unbiased).

    ``name`` is "simulated", with "-verbose", "-sycophantic" and "-cautious" appended for each bias that is
    positive (e.g. "simulated-sycophantic").
    """

    def __init__(self, temperature: float = 1.0, verbosity_bias: float = 0.0, seed: int = 0, *,
                 sycophancy_bias: float = 0.0, refusal_bias: float = 0.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.verbosity_bias = verbosity_bias
        self.sycophancy_bias = sycophancy_bias
        self.refusal_bias = refusal_bias
        biases = (("verbose", verbosity_bias), ("sycophantic", sycophancy_bias), ("cautious", refusal_bias))
        self.name = "-".join(["simulated", *(word for word, bias in biases if bias > 0)])
        self._rng = random.Random(seed)

    def _bias(self, prompt: PromptLike, response: Response) -> float:
        """The failure-mode biases' credit to one response, in gold points (0 when both biases are 0)."""
        if not (self.sycophancy_bias or self.refusal_bias):
            return 0.0
        kind = behaviour(prompt, response)
        agreeable = {"agreement": 1.0, "correction": -1.0}.get(kind, 0.0)
        return self.sycophancy_bias * agreeable + self.refusal_bias * (kind == "refusal")

    def utility(self, prompt: PromptLike, response: Response) -> float:
        """What this annotator thinks an answer is worth, in gold points: gold plus its biases' credit.
        Preferences follow differences of it (see the module docstring)."""
        words = len(response_text(response).split())
        return gold_score(prompt, response) + self.verbosity_bias * words + self._bias(prompt, response)

    def reward(self, prompts: Sequence[PromptLike], responses: Sequence[Response]) -> list[float]:
        """``utility`` over a batch, in the project's reward protocol ``reward(prompts, responses) -> scores``:
        the reward model these labels would teach with unlimited pairs (e.g. PPO's ``reward=`` in a test)."""
        return [self.utility(p, r) for p, r in zip(prompts, responses, strict=True)]

    def prob_a(self, prompt: PromptLike, a: Response, b: Response) -> float:
        """Probability that this annotator prefers ``a`` over ``b``."""
        prompt = parse_prompt(prompt)
        margin = gold_score(prompt, a) - gold_score(prompt, b)
        margin += self.verbosity_bias * (len(response_text(a).split()) - len(response_text(b).split()))
        margin += self._bias(prompt, a) - self._bias(prompt, b)
        z = margin / self.temperature
        # numerically stable sigmoid
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def __call__(self, prompt: PromptLike, a: Response, b: Response) -> str:
        """Sample a choice, ``"a"`` or ``"b"``, from ``prob_a``."""
        return "a" if self._rng.random() < self.prob_a(prompt, a, b) else "b"


def gold_preference(prompt: PromptLike, a: Response, b: Response) -> str:
    """The gold labeler: ``"a"`` or ``"b"``, whichever has the higher gold score; ``"tie"`` when equal.

    Follows the AI-labeler protocol, so ``label_with(store, gold_preference, "gold")`` records reference
    labels that human and simulated annotators can be measured against.
    """
    score_a, score_b = gold_score(prompt, a), gold_score(prompt, b)
    if math.isclose(score_a, score_b, abs_tol=1e-9):
        return "tie"
    return "a" if score_a > score_b else "b"
