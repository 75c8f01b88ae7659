"""Batched sampling from a chat model: prompts in, response texts out.

Prompts are chat-formatted with the tokenizer's template (`add_generation_prompt=True`), left-padded,
and sampled until any stop token (`chat.stop_token_ids`: the checkpoint's EOS list and the family's turn end)
or `max_new_tokens`. Sampling draws from exactly the distribution `SamplingSettings` describes: while it runs,
the checkpoint's own `generation_config` (a repetition penalty, min-new-tokens, suppressed tokens, top-k/p
defaults …) is swapped out (`exact_sampling`), and what it would have changed is said once. Used by pair
generation, best-of-N and evaluation; PPO's rollout samples the same way and also records log-probs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import DynamicCache, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicLayer

from rlhf_widgets.runtime.attention import cpu_math_attention
from rlhf_widgets.runtime.chat import render, stop_token_ids
from rlhf_widgets.runtime.data import as_messages
from rlhf_widgets.runtime.precision import check_inference_precision, inference_autocast
from rlhf_widgets.runtime.quiet import progress
from rlhf_widgets.runtime.types import Prompt
from rlhf_widgets.runtime.validation import check_fields


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
    mixed_precision: str = "auto"
    """compute dtype of a float32 model's sampling forwards: "auto" (default) = bf16 autocast where the hardware
    computes bf16 natively (a CPU with AVX512-BF16 / AMX, a CUDA GPU with bf16 —
    `ppo.precision.resolve_mixed_precision`; `RLHF_WIDGETS_CPU_BF16=0` turns it off for the whole workbench), else
    float32; "no" = float32; "bf16" = always; a model stored in half precision samples in its own dtype. bf16 logits
    round a logit near 10 by up to 0.03, which moves each token's probability by a few %: the sandbox's outcomes
    over seeds land within float32's spread (docs/PERFORMANCE.md, "Same seeds, both paths"); "no" samples the exact
    float32 distribution."""

    def __post_init__(self) -> None:
        check_fields(self, {"max_new_tokens": (self.max_new_tokens > 0, "must be positive"),
                            "temperature": (self.temperature >= 0, "must be >= 0"),
                            "top_p": (0 < self.top_p <= 1, "must be in (0, 1]"),
                            "top_k": (self.top_k >= 0, "must be >= 0")})
        check_inference_precision("SamplingSettings.mixed_precision", self.mixed_precision)

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


NEUTRAL_SAMPLING = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0,
    "min_new_tokens": None, "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": None,
    "exponential_decay_length_penalty": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "typical_p": 1.0,
    "min_p": None, "renormalize_logits": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "do_sample": False,
}
"""`generation_config` fields that change which tokens are sampled, at the values that change nothing
(temperature / top-k / top-p / do_sample are set per call from `SamplingSettings`)."""


class SamplingOverrideWarning(UserWarning):
    """A checkpoint's generation_config would have changed the sampled distribution; it was not applied."""


_WARNED: set[str] = set()


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def checkpoint_sampling_overrides(model: torch.nn.Module) -> dict:
    """The fields of the model's own `generation_config` that would change the sampled distribution."""
    config = getattr(_hf_model(model), "generation_config", None)
    if config is None:
        return {}
    return {k: v for k, v in config.to_dict().items() if k in NEUTRAL_SAMPLING and k not in
            ("temperature", "top_k", "top_p", "do_sample") and v not in (NEUTRAL_SAMPLING[k], None, [], {})}


@contextmanager
def exact_sampling(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> Iterator[list[int]]:
    """Inside: the model's `generation_config` is a clean one (stop ids, pad, nothing that bends the
    distribution), so `generate` samples from exactly softmax(logits / temperature) with the top-k / top-p
    passed to it — the distribution evaluation's KL and PPO's log-probs assume. Yields the stop ids. What the
    checkpoint's config would have changed is said once per model and setting."""
    target = _hf_model(model)
    original = getattr(target, "generation_config", None)
    stops = stop_token_ids(tokenizer, original)
    overrides = checkpoint_sampling_overrides(model)
    if overrides:
        name = getattr(target, "name_or_path", "") or type(target).__name__
        message = (f"{name}: sampling ignores these generation_config settings, which would change the sampled "
                   f"distribution: {overrides}. Responses are drawn from exactly softmax(logits / temperature) with "
                   "the top-k / top-p given (SamplingSettings / PPOConfig).")
        if message not in _WARNED:
            _WARNED.add(message)
            warnings.warn(message, SamplingOverrideWarning, stacklevel=3)
    clean = GenerationConfig(eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=getattr(original, "bos_token_id", None),
                             **{k: v for k, v in NEUTRAL_SAMPLING.items() if v is not None})
    target.generation_config = clean
    try:
        yield stops
    finally:
        target.generation_config = original


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values live in one buffer allocated for the whole call: each decode step
    writes its token's keys and values into the next slot instead of `torch.cat`-ing a new, one-longer copy of the
    whole cache: copying the cache at every step makes a call of T steps copy O(T²) tokens' keys and values, where
    writing into the buffer copies each once (on CPU that copy was the largest piece of a sandbox decode step:
    docs/PERFORMANCE.md). `keys` / `values` are views of the filled part, so attention
    reads exactly the tensors it read before. The buffer doubles if a call runs past `capacity`."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        if self._key_buffer is None or end > self._key_buffer.shape[-2]:
            self._grow(key_states, value_states, max(end, self.capacity, 2 * self._length))
        self._key_buffer[..., self._length : end, :].copy_(key_states)
        self._value_buffer[..., self._length : end, :].copy_(value_states)
        self._length = end
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int) -> None:
        def buffer(old: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
            shape = (*like.shape[:-2], length, like.shape[-1])
            out = torch.empty(shape, dtype=like.dtype, device=like.device)
            if old is not None:
                out[..., : self._length, :].copy_(old[..., : self._length, :])
            return out

        self._key_buffer = buffer(self._key_buffer, key_states)
        self._value_buffer = buffer(self._value_buffer, value_states)

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        self._length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.is_initialized and self.keys is not None:
            self._length = self.keys.shape[-2]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._unsupported("batch_repeat_interleave")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._unsupported("batch_select_indices")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._unsupported("reorder_cache")

    @staticmethod
    def _unsupported(what: str) -> None:
        raise NotImplementedError(f"PreallocatedLayer.{what}: sampling's cache serves one batch, no beams")


class PreallocatedCache(DynamicCache):
    """A `DynamicCache` whose layers are `PreallocatedLayer`s of `capacity` tokens each."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        Cache.__init__(self, layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])


def preallocated_cache(model: torch.nn.Module, prompt_length: int, max_new_tokens: int) -> PreallocatedCache | None:
    """A `PreallocatedCache` sized for `prompt_length + max_new_tokens` tokens, for a plain
    decoder (every layer full attention: Llama, Qwen2, SmolLM, GPT-2 …); None for anything else (sliding windows,
    linear attention, encoder–decoders), which keeps transformers' own cache."""
    config = getattr(_hf_model(model), "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    text = config.get_text_config(decoder=True)
    layer_types = getattr(text, "layer_types", None)
    if getattr(text, "sliding_window", None) or (layer_types and set(layer_types) != {"full_attention"}):
        return None
    layers = getattr(text, "num_hidden_layers", None)
    if not layers:
        return None
    return PreallocatedCache(layers, prompt_length + max_new_tokens)


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
    texts = [render(tokenizer, as_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def decode_responses(
    tokenizer: PreTrainedTokenizerBase, response_ids: torch.Tensor, stop_ids: Sequence[int] | None = None
) -> list[Generation]:
    """Turn generated ids (B, T_new), cut at the first stop token (default: the tokenizer's EOS), into
    `Generation`s; `ended_with_eos` says a stop token ended the response."""
    stops = set(stop_ids) if stop_ids is not None else {tokenizer.eos_token_id}
    out = []
    for row in response_ids.tolist():
        end = next((i for i, t in enumerate(row) if t in stops), None)
        row = row if end is None else row[:end]
        row = [t for t in row if t != tokenizer.pad_token_id]
        text = tokenizer.decode(row, skip_special_tokens=True).strip()
        out.append(Generation(text, end is not None, len(row) + int(end is not None)))
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
    # on CPU the half-precision decode step skips sdpa's kernel (rlhf_widgets.runtime.attention)
    with (exact_sampling(model, tokenizer) as stops, inference_autocast(model, settings.mixed_precision),
          cpu_math_attention(model)):
        for start in progress(starts, desc="generating", disable=not show_progress, unit="batch"):
            batch = encode_prompts(tokenizer, prompts[start : start + batch_size], device)
            cache = preallocated_cache(model, batch["input_ids"].shape[1], settings.max_new_tokens)
            ids = model.generate(**batch, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=stops, **({"cache": cache} if cache is not None else {}))
            results.extend(decode_responses(tokenizer, ids[:, batch["input_ids"].shape[1] :], stops))
    model.train(was_training)
    return results
