"""Sampling's preallocated KV cache (generation.PreallocatedLayer): the same tokens as transformers' growing cache."""

from __future__ import annotations

import pytest
import torch

from rlhf_widgets.runtime.generation import SamplingSettings, encode_prompts, exact_sampling, preallocated_cache


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_preallocated_cache_samples_the_same_tokens(precision: str) -> None:
    from rlhf_widgets.runtime.attention import cpu_math_attention
    from rlhf_widgets.runtime.models import load_causal_lm
    from rlhf_widgets.runtime.precision import inference_autocast
    from rlhf_widgets.sandbox import make_prompts

    model, tokenizer = load_causal_lm("sandbox")
    model.eval()
    batch = encode_prompts(tokenizer, [p.text for p in make_prompts(12, seed=0)])
    settings = SamplingSettings(max_new_tokens=24, mixed_precision=precision)

    def sample(cache) -> torch.Tensor:
        torch.manual_seed(0)
        with (torch.no_grad(), exact_sampling(model, tokenizer) as stops,
              inference_autocast(model, precision), cpu_math_attention(model)):
            return model.generate(**batch, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=stops, **({"cache": cache} if cache is not None else {}))

    cache = preallocated_cache(model, batch["input_ids"].shape[1], settings.max_new_tokens)
    assert cache is not None
    assert torch.equal(sample(cache), sample(None))
    # a buffer too short for the call grows (doubling) and still gives the same tokens
    assert torch.equal(sample(preallocated_cache(model, 2, 1)), sample(None))
