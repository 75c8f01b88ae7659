"""The sandbox tokenizer: a small byte-level BPE trained on the world's text, with a chat template.

Byte-level, so ``decode(encode(text)) == text`` exactly — the gold scorer reads decoded text.
Digits are split one per token so that a model can copy an order number from the prompt.
Special tokens: ``<|pad|>`` (padding, distinct from EOS), ``<|end|>`` (EOS: ends every chat
turn, so generation stops there) and the role markers ``<|system|>``, ``<|user|>``,
``<|assistant|>``. A chat renders as::

    <|user|>
    My order #48213 hasn't arrived. What should I do?<|end|><|assistant|>
    Check your tracking number.<|end|>

``add_generation_prompt=True`` ends the text with an open ``<|assistant|>\\n`` turn; assistant
content is wrapped in ``{% generation %}`` so TRL's ``assistant_only_loss`` works.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rlhf_widgets.sandbox.world import ideal_response, make_prompts, random_response

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|end|>"
ROLE_TOKENS: tuple[str, ...] = ("<|system|>", "<|user|>", "<|assistant|>")
VOCAB_SIZE = 1024
"""Tokens in the vocabulary, special tokens included (a multiple of 64, for 4-bit layers on CPU)."""
MODEL_MAX_LENGTH = 256
"""Longest sequence, in tokens, the sandbox model handles (its ``max_position_embeddings``)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _world_text(n_dialogues: int, seed: int) -> Iterator[str]:
    """Prompts, clause-mix responses and ideal responses of ``n_dialogues`` train prompts."""
    rng = random.Random(f"tokenizer-{seed}")
    for prompt in make_prompts(n_dialogues, seed=seed, split="train"):
        yield prompt.text
        yield random_response(prompt, rng)
        yield ideal_response(prompt)


def build_tokenizer(
    vocab_size: int = VOCAB_SIZE, n_dialogues: int = 20_000, seed: int = 0
) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on ``n_dialogues`` sandbox dialogues (default 20,000).

    Raises ``ValueError`` if the world's text cannot fill ``vocab_size`` (default 1024) tokens.
    """
    special_tokens = [PAD_TOKEN, EOS_TOKEN, *ROLE_TOKENS]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_world_text(n_dialogues, seed), trainer)
    if bpe.get_vocab_size() != vocab_size:
        raise ValueError(f"the sandbox text only supports {bpe.get_vocab_size()} tokens, not {vocab_size}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS),
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
