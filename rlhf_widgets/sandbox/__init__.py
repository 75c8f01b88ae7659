"""The offline sandbox: a customer-support world, its gold scorer, a simulated annotator, and a
tiny tokenizer + Llama base model pretrained on the world's text (see ``world`` for what "good"
means here)."""

from rlhf_widgets.sandbox.annotator import SimulatedAnnotator, gold_preference
from rlhf_widgets.sandbox.gold import GOLD_WEIGHTS, WORD_BUDGET, gold_features, gold_reward, gold_score
from rlhf_widgets.sandbox.pretrain import base_model_path, build_base_model
from rlhf_widgets.sandbox.tokenizer import CHAT_TEMPLATE, EOS_TOKEN, PAD_TOKEN, build_tokenizer
from rlhf_widgets.sandbox.world import (
    ISSUES,
    TONES,
    SupportPrompt,
    curt_demo,
    ideal_response,
    make_prompts,
    parse_prompt,
    random_response,
    sft_dataset,
)

__all__ = [
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "GOLD_WEIGHTS",
    "ISSUES",
    "PAD_TOKEN",
    "TONES",
    "WORD_BUDGET",
    "SimulatedAnnotator",
    "SupportPrompt",
    "base_model_path",
    "build_base_model",
    "build_tokenizer",
    "curt_demo",
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
