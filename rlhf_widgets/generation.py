"""Batched sampling from a chat model: prompts in, response texts out.

Prompts are chat-formatted with the tokenizer's template (`add_generation_prompt=True`), left-padded,
and sampled until EOS or `max_new_tokens`. Used by pair generation, best-of-N and evaluation;
PPO has its own rollout because it needs the token ids and log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_widgets.data import as_messages

Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample. `temperature=0` means greedy decoding."""

    max_new_tokens: int = 64
    """most new tokens per response"""
    temperature: float = 1.0
    """softmax temperature; 0 = greedy"""
    top_p: float = 1.0
    """nucleus sampling mass (1.0 = off)"""
    top_k: int = 0
    """keep only the k most likely tokens (0 = off)"""

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"SamplingSettings.max_new_tokens={self.max_new_tokens}: must be positive")
        if self.temperature < 0:
            raise ValueError(f"SamplingSettings.temperature={self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingSettings.top_p={self.top_p}: must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"SamplingSettings.top_k={self.top_k}: must be >= 0")

    def generate_kwargs(self) -> dict:
        """Keyword arguments for `model.generate`."""
        if self.temperature == 0:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens}
        return {
            "do_sample": True,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
        }


@dataclass(frozen=True)
class Generation:
    """One sampled response: its text (special tokens removed), whether it ended with EOS, its length."""

    text: str
    ended_with_eos: bool
    num_tokens: int


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Chat-format and left-pad prompts → `input_ids`, `attention_mask`, each (B, T_prompt)."""
    texts = [
        tokenizer.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts
    ]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def decode_responses(
    tokenizer: PreTrainedTokenizerBase, response_ids: torch.Tensor
) -> list[Generation]:
    """Turn generated ids (B, T_new), cut at the first EOS, into `Generation`s."""
    out = []
    for row in response_ids.tolist():
        ended = tokenizer.eos_token_id in row
        row = row[: row.index(tokenizer.eos_token_id)] if ended else row
        row = [t for t in row if t != tokenizer.pad_token_id]
        out.append(Generation(tokenizer.decode(row, skip_special_tokens=True).strip(), ended, len(row) + int(ended)))
    return out


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    settings: SamplingSettings | None = None,
    *,
    batch_size: int = 32,
    seed: int | None = None,
    show_progress: bool = False,
) -> list[Generation]:
    """Sample one response per prompt, in batches of `batch_size`; `seed` makes sampling reproducible."""
    settings = settings or SamplingSettings()
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[Generation] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generating", disable=not show_progress, unit="batch"):
        batch = encode_prompts(tokenizer, prompts[start : start + batch_size], device)
        ids = model.generate(
            **batch,
            **settings.generate_kwargs(),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        results.extend(decode_responses(tokenizer, ids[:, batch["input_ids"].shape[1] :]))
    model.train(was_training)
    return results
