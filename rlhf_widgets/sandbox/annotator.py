"""A simulated annotator: noisy (and optionally biased) pairwise preferences from the gold scorer,
and `gold_preference`, the noiseless reference labeler.

Bradley–Terry on gold differences::

    P(a ≻ b) = sigmoid((gold(a) − gold(b) + verbosity_bias · (words(a) − words(b))) / temperature)

``temperature`` sets the noise (→ 0: always agrees with gold; large: coin flips).
``verbosity_bias`` (gold points per extra word) makes a flawed proxy that likes long, padded
answers — the way to show reward hacking on purpose.
"""

from __future__ import annotations

import math
import random

from rlhf_widgets.sandbox.gold import Response, gold_score, response_text
from rlhf_widgets.sandbox.world import PromptLike


class SimulatedAnnotator:
    """Labels pairs like a human would, following the AI-labeler protocol ``(prompt, a, b) -> "a" | "b"``.

    Args:
        temperature: Bradley–Terry temperature in gold points (default 1.0); must be > 0.
        verbosity_bias: gold points credited per extra word (default 0.0, unbiased).
        seed: seed of the annotator's own random generator (default 0).
    """

    def __init__(self, temperature: float = 1.0, verbosity_bias: float = 0.0, seed: int = 0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.verbosity_bias = verbosity_bias
        self.name = "simulated-verbose" if verbosity_bias > 0 else "simulated"
        self._rng = random.Random(seed)

    def prob_a(self, prompt: PromptLike, a: Response, b: Response) -> float:
        """Probability that this annotator prefers ``a`` over ``b``."""
        margin = gold_score(prompt, a) - gold_score(prompt, b)
        margin += self.verbosity_bias * (len(response_text(a).split()) - len(response_text(b).split()))
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
