"""The offline sandbox: a customer-support world, its gold scorer, a simulated annotator, and a
tiny tokenizer + Llama base model pretrained on the world's text (see ``world`` for what "good"
means here, and ``scenarios`` for the opt-in failure modes: sycophancy and over-refusal)."""

from rlhf_widgets.sandbox.annotator import SimulatedAnnotator, gold_preference
from rlhf_widgets.sandbox.gold import (
    BEHAVIOURS,
    GOLD_WEIGHTS,
    WORD_BUDGET,
    behaviour,
    gold_features,
    gold_reward,
    gold_score,
)
from rlhf_widgets.sandbox.pretrain import base_model_path, build_base_model
from rlhf_widgets.sandbox.scenarios import PROMPT_KINDS, SCENARIOS
from rlhf_widgets.sandbox.tokenizer import CHAT_TEMPLATE, EOS_TOKEN, PAD_TOKEN, build_tokenizer
from rlhf_widgets.sandbox.vocabulary import ISSUES, TONES
from rlhf_widgets.sandbox.world import (
    SupportPrompt,
    curt_demo,
    demonstration,
    ideal_response,
    make_prompts,
    parse_prompt,
    random_response,
    sft_dataset,
)

__all__ = [
    "BEHAVIOURS",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "GOLD_WEIGHTS",
    "ISSUES",
    "PAD_TOKEN",
    "PROMPT_KINDS",
    "SCENARIOS",
    "TONES",
    "WORD_BUDGET",
    "SimulatedAnnotator",
    "SupportPrompt",
    "base_model_path",
    "behaviour",
    "build_base_model",
    "build_tokenizer",
    "curt_demo",
    "demonstration",
    "gold_features",
    "gold_preference",
    "gold_reward",
    "gold_score",
    "ideal_response",
    "make_prompts",
    "parse_prompt",
    "random_response",
    "sft_dataset",
]
