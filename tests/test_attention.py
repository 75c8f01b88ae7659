"""`runtime.attention`: sdpa's forward bit for bit, a backward as close to the exact gradient as the kernel's."""

from __future__ import annotations

import pytest
import torch
from conftest import sandbox_prompts
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import rlhf_widgets.runtime.attention as attention
from rlhf_widgets.runtime.attention import SDPA_MATH_BACKWARD, sdpa_math_backward, use_sdpa_math_backward
from rlhf_widgets.sandbox import gold_reward
from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer


class _Attention(torch.nn.Module):
    """what transformers' attention modules expose to an attention function"""

    def __init__(self, groups: int, is_causal: bool = True) -> None:
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, is_causal


def _left_padded(batch: int, length: int, pads: list[int]) -> torch.Tensor:
    """(batch, 1, length, length) causal bool mask with `pads[i]` padding keys on the left of row i"""
    mask = torch.ones(batch, 1, length, length, dtype=torch.bool).tril()
    for row, pad in enumerate(pads):
        mask[row, :, :, :pad] = False
    return mask


MASKS = {
    "left padding": lambda: _left_padded(3, 24, [0, 5, 11]),
    "causal flag (no mask)": lambda: None,
    "float mask per head": lambda: torch.where(_left_padded(3, 24, [2, 0, 7]), 0.0, float("-inf")).expand(3, 6, 24, 24),
    "sliding window": lambda: _left_padded(3, 24, [0, 3, 0]) & torch.ones(24, 24, dtype=torch.bool).triu(-5),
}


def _grads(fn, q, k, v, grad_out, dtype, mask=None):
    q, k, v = (t.to(dtype).clone().requires_grad_() for t in (q, k, v))
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)  # as a model builds it (sdpa misreads a float32 mask with float64 inputs)
    out = fn(q, k, v, mask)
    out.backward(grad_out.to(dtype))
    return out.detach(), [t.grad.double() for t in (q, k, v)]


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("groups", [1, 3])
def test_same_forward_and_a_gradient_at_least_as_exact_as_sdpa_s(mask_name: str, groups: int) -> None:
    gen = torch.Generator().manual_seed(0)
    kv_heads, length, dim = 6 // groups, 24, 16
    q = torch.randn(3, 6, length, dim, generator=gen)
    k, v = (torch.randn(3, kv_heads, length, dim, generator=gen) for _ in range(2))
    grad_out = torch.randn(3, length, 6, dim, generator=gen)
    mask, module = MASKS[mask_name](), _Attention(groups)
    padded_query = torch.zeros(3, length, dtype=torch.bool) if mask is None else ~mask.any(-1)[:, 0]
    grad_out[padded_query] = 0.0  # a query that sees no key: its output is no one's input in a model

    def ours(q, k, v, mask):
        return sdpa_math_backward(module, q, k, v, mask, scaling=0.3)[0]

    def sdpa(q, k, v, mask):
        return sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)[0]

    _, exact = _grads(sdpa, q, k, v, grad_out, torch.float64, mask)
    for dtype, tolerance in [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)]:
        out_sdpa, grads_sdpa = _grads(sdpa, q, k, v, grad_out, dtype, mask)
        out_ours, grads_ours = _grads(ours, q, k, v, grad_out, dtype, mask)
        assert torch.equal(out_ours, out_sdpa)
        for name, mine, kernel, truth in zip("qkv", grads_ours, grads_sdpa, exact, strict=True):
            error, kernel_error = ((g - truth).norm() / truth.norm() for g in (mine, kernel))
            assert error <= max(1.25 * kernel_error, tolerance / 10), (name, dtype, error, kernel_error)
            assert error < tolerance, (name, dtype, error)


def test_backward_inside_an_autocast_region_stays_in_float32() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=gen, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(2, 16, 4, 8, generator=gen)
    grad_out[1, :3] = 0.0
    module, mask = _Attention(1), _left_padded(2, 16, [0, 3])
    grads = []
    for region in (torch.autocast("cpu", enabled=False), torch.autocast("cpu", dtype=torch.bfloat16)):
        out = sdpa_math_backward(module, q, k, v, mask)[0]  # float32, outside autocast
        with region:  # a training loop may call backward inside its autocast region
            grads.append(torch.autograd.grad(out, (q, k, v), grad_out))
    for outside, inside in zip(*grads, strict=True):
        assert torch.equal(outside, inside)


def test_no_graph_or_dropout_is_sdpa_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(attention._SdpaMathBackward, "apply", lambda *a: calls.append(a))
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    with torch.no_grad():
        sdpa_math_backward(_Attention(1), q, q, q, None)
    sdpa_math_backward(_Attention(1), q, q, q, None, dropout=0.1)
    assert calls == []
    sdpa_math_backward(_Attention(1), q, q, q, None)
    assert len(calls) == 1


def test_every_family_keeps_its_logits_and_gets_the_same_gradients(family_dir) -> None:
    model = AutoModelForCausalLM.from_pretrained(family_dir, dtype=torch.float32).eval()
    if model.config._attn_implementation != "sdpa":  # Gemma 2's soft-capping needs eager attention
        assert not use_sdpa_math_backward(model)
        return
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 20), generator=gen)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :4], attention_mask[2, :9] = 0, 0  # left padding, as PPO batches come
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    def run():
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids).logits
        logits.float().log_softmax(-1)[attention_mask.bool()].max(-1).values.sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    logits_sdpa, grads_sdpa = run()
    assert use_sdpa_math_backward(model)
    assert model.config._attn_implementation == SDPA_MATH_BACKWARD
    logits_ours, grads_ours = run()
    assert torch.equal(logits_ours, logits_sdpa)
    assert grads_ours.keys() == grads_sdpa.keys()
    for name, grad in grads_sdpa.items():  # float32 rounding apart
        assert (grads_ours[name] - grad).norm() <= 1e-5 * grad.norm(), name


@pytest.mark.parametrize("fast_paths", [True, False])
def test_ppo_trains_through_it_on_cpu_unless_the_fast_paths_are_off(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                                   fast_paths: bool) -> None:
    backwards = []
    exact_backward = attention._attention_backward
    monkeypatch.setattr(attention, "_attention_backward", lambda *a: backwards.append(1) or exact_backward(*a))
    config = PPOConfig(output_dir=str(tmp_path), num_updates=1, batch_size=4, mini_batch_size=4, num_ppo_epochs=1,
                       max_new_tokens=8, sample_every=0, mixed_precision="no", fast_paths=fast_paths)
    trainer = PPOTrainer(sandbox_prompts(8, seed=0), config, reward=gold_reward)
    assert trainer.model_config._attn_implementation == (SDPA_MATH_BACKWARD if fast_paths else "sdpa")
    metrics = trainer.step()
    assert metrics["val/ratio"] == pytest.approx(1.0, abs=1e-5)  # the forward is sdpa's: same log-probs as sampled
    # every decoder layer's attention in the policy's backward, the value network's top layers in its own
    layers = trainer.model_config.num_hidden_layers
    assert len(backwards) == (layers + (config.value_layers(layers) or layers) if fast_paths else 0)


DECODE_MASKS = {
    "left padding": lambda: _left_padded(3, 24, [0, 5, 11])[:, :, -1:],
    "no mask": lambda: None,
    "float mask per head": lambda: torch.where(_left_padded(3, 24, [2, 0, 7]), 0.0, float("-inf"))[:, :, -1:]
    .expand(3, 6, 1, 24),
}


@pytest.mark.parametrize("mask_name", list(DECODE_MASKS))
@pytest.mark.parametrize("groups", [1, 3])
def test_half_precision_decode_step_is_as_exact_as_sdpa_s(mask_name: str, groups: int) -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, 6, 1, 16, generator=gen)
    k, v = (torch.randn(3, 6 // groups, 24, 16, generator=gen) * 2 for _ in range(2))
    mask, module = DECODE_MASKS[mask_name](), _Attention(groups)

    def run(fn, dtype, autocast: bool):
        inputs = [t.to(dtype) for t in (q, k, v)]
        m = mask.to(dtype) if mask is not None and mask.is_floating_point() else mask  # in the model's dtype
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return fn(module, *inputs, m, scaling=0.3)[0]

    exact = run(sdpa_attention_forward, torch.float64, False)
    for dtype, autocast in [(torch.bfloat16, False), (torch.float32, True)]:  # a bf16 model; autocast with fp32 RoPE
        ours, kernel = run(sdpa_math_backward, dtype, autocast), run(sdpa_attention_forward, dtype, autocast)
        assert ours.dtype == kernel.dtype == torch.bfloat16 and ours.shape == kernel.shape
        error, kernel_error = ((o.double() - exact).norm() / exact.norm() for o in (ours, kernel))
        assert error <= max(2 * kernel_error, 2e-3), (dtype, autocast, error, kernel_error)
    # float32 decode steps are sdpa's own
    assert torch.equal(run(sdpa_math_backward, torch.float32, False), run(sdpa_attention_forward, torch.float32, False))


def test_sampling_on_cpu_decodes_with_it_and_restores_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlhf_widgets.runtime.generation import SamplingSettings, generate
    from rlhf_widgets.runtime.models import load_causal_lm

    model, tokenizer = load_causal_lm("sandbox")
    steps = []
    decode = attention._decode_attention
    monkeypatch.setattr(attention, "_decode_attention", lambda *a: steps.append(a[-1]) or decode(*a))
    prompts = sandbox_prompts(3, seed=0)
    generate(model, tokenizer, prompts, SamplingSettings(max_new_tokens=5, mixed_precision="no"), seed=0)
    assert steps == []  # float32: sdpa
    out = generate(model, tokenizer, prompts, SamplingSettings(max_new_tokens=5, mixed_precision="bf16"), seed=0)
    assert steps and set(steps) == {torch.bfloat16} and len(out) == 3
    assert model.config._attn_implementation == "sdpa"


def test_trl_stages_train_through_it_on_cpu_and_hand_on_sdpa(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlhf_widgets.stages.sft import SFTStageConfig, train_sft

    backwards = []
    exact_backward = attention._attention_backward
    monkeypatch.setattr(attention, "_attention_backward", lambda *a: backwards.append(1) or exact_backward(*a))
    config = SFTStageConfig(output_dir=str(tmp_path), sandbox_demos=16, num_train_epochs=1,
                            per_device_train_batch_size=8)
    result = train_sft(config=config)
    # 2 steps × the sandbox model's 4 layers, each step in one or more length-sorted pieces (runtime.length_split)
    assert len(backwards) >= 2 * 4 and len(backwards) % 4 == 0
    saved = AutoModelForCausalLM.from_pretrained(result.model_path)
    assert saved.config._attn_implementation == "sdpa"
    assert "sdpa_math_backward" not in (result.model_path / "config.json").read_text()
