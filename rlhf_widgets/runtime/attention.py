"""Attention with sdpa's forward and a cheaper backward and decode step on CPU, as a transformers attention
implementation.

PyTorch's CPU flash-attention backward is written for long sequences: it works through the scores in blocks, as
FlashAttention does (Dao et al. 2022), so the T × T score matrix is never held whole. At the lengths RLHF trains on
(tens to a few hundred tokens) that matrix is small, and each call pays for blocking it does not need; recomputing
the softmax and taking its gradient with five batched matmuls does the same work in a few large calls (measured:
docs/PERFORMANCE.md, "PPO's fast paths and memory, one at a time").

`SDPA_MATH_BACKWARD` is registered with transformers' `AttentionInterface` (its masks are sdpa's). Every
forward calls transformers' own sdpa function — the same kernel, so the same outputs bit for bit, with or
without a graph, which keeps a policy's training log-probs equal to the ones it sampled with. Only where a
graph is built on CPU does the backward differ: it is the exact gradient of the same attention, from the
softmax recomputed in float32 (as close to a float64 reference as the kernel's own, in float32 and in bf16:
tests/test_attention.py). Anything it does not cover — CUDA, dropout, soft-capping, position biases,
attention sinks — runs sdpa's backward unchanged.

The one other exception is sampling's decode step in half precision on CPU: one query per sequence against the
cache, no graph, bf16 / fp16 inputs. A kernel built to tile many queries has nothing to tile there, and three plain
ops cost less (docs/PERFORMANCE.md), so the step computes `softmax(q kᵀ·scale + mask) v` with float32 scores and
softmax (output error against a float64 reference within 2x the kernel's, both at bf16's rounding). Float32 decode
steps stay sdpa's.

Who uses it: the PPO trainer's policy on CPU (`PPOConfig.fast_paths`); `generation.generate` and the TRL stages'
training (`stages.run_trl_trainer`) on CPU, for the length of the call (`cpu_math_attention`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SDPA_MATH_BACKWARD = "sdpa_math_backward"
"""the attention implementation's name (it contains "sdpa", so transformers checks a model supports sdpa)"""


class _SdpaMathBackward(torch.autograd.Function):
    """sdpa's forward; backward from the float32 softmax of the same scores and mask."""

    @staticmethod
    def forward(ctx, query, key, value, module, attention_mask, scaling, is_causal, kwargs):
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, 0.0, scaling, is_causal, **kwargs)
        ctx.save_for_backward(query, key, value, attention_mask)
        ctx.scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        # sdpa_attention_forward's rule: the kernel's (upper-left) causal flag only without a mask, several queries
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        ctx.causal = bool(causal and attention_mask is None and query.shape[2] > 1)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, mask = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):  # backward may be called inside an autocast region
            return (*_attention_backward(q, k, v, grad_out, mask, ctx.scale, ctx.causal),
                    None, None, None, None, None)


def _attention_backward(q, k, v, grad_out, mask, scale, causal):
    """d(q, k, v) of `softmax(q kᵀ·scale + mask) v` for (batch, heads, length, dim) inputs whose key / value heads
    serve `heads / kv_heads` query heads each (GQA), given the gradient of the (batch, length, heads, dim) output.
    The query heads of one key/value head are stacked along the rows, so K and V are never repeated. Scores,
    softmax and the softmax's gradient are float32; the three products that are the gradients take the inputs'
    dtype (bf16: float32 accumulation, rounded once, as the kernel's own)."""
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    rep = h // hkv
    q_rows = q.reshape(b, hkv, rep * lq, d)
    grad_rows = grad_out.transpose(1, 2).reshape(b, hkv, rep * lq, d)
    scores = torch.matmul(q_rows.float(), k.float().transpose(-1, -2)).mul_(scale).view(b, hkv, rep, lq, lk)
    if mask is None and causal:
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        if mask.dim() == 4:  # (batch or 1, heads or 1, lq, lk) -> broadcastable over (b, hkv, rep, lq, lk)
            mask = mask.view(mask.shape[0], hkv, rep, lq, lk) if mask.shape[1] == h > 1 else mask.unsqueeze(2)
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask)
    # a query that sees no key (left padding) has no softmax: sdpa outputs zeros there, whose gradient is zero
    probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0).view(b, hkv, rep * lq, lk)
    dprobs = torch.matmul(grad_rows.float(), v.float().transpose(-1, -2))
    dscores = torch._softmax_backward_data(dprobs, probs, -1, torch.float32).mul_(scale).to(q.dtype)
    dv = torch.matmul(probs.to(v.dtype).transpose(-1, -2), grad_rows.to(v.dtype))
    dq = torch.matmul(dscores, k).view(b, h, lq, d)
    dk = torch.matmul(dscores.transpose(-1, -2), q_rows)
    return dq, dk, dv


_HALF = (torch.bfloat16, torch.float16)


def _half_dtype(query: torch.Tensor) -> torch.dtype | None:
    """The half-precision dtype sdpa would compute `query` in on CPU (its own, or autocast's), else None."""
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _HALF:
        return torch.get_autocast_dtype("cpu")  # (RoPE in float32 hands autocast float32 queries and keys)
    return query.dtype if query.dtype in _HALF else None


def _decode_attention(q, k, v, mask, scale, dtype):
    """One query per sequence, (batch, heads, 1, dim), against (batch, kv_heads, length, dim) keys and values →
    the (batch, 1, heads, dim) output sdpa_attention_forward returns, in `dtype`; the query heads of one key/value
    head are its rows (GQA without repeating the cache). Scores and softmax in float32."""
    b, h, _, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    scale = scale if scale is not None else d**-0.5
    with torch.autocast("cpu", enabled=False):
        scores = torch.matmul(q.reshape(b, hkv, h // hkv, d).float(), k.float().transpose(-1, -2)).mul_(scale)
        if mask is not None:
            # (batch or 1, heads or 1, 1, length) -> broadcastable over (batch, kv_heads, heads per kv head, length)
            mask = mask.view(mask.shape[0], hkv, h // hkv, lk) if mask.shape[1] == h > 1 else mask
            if mask.dtype == torch.bool:
                scores.masked_fill_(~mask, float("-inf"))
            else:
                scores.add_(mask)
        probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # a query that sees no key: zeros, as sdpa
        return torch.matmul(probs.to(dtype), v.to(dtype)).view(b, 1, h, v.shape[-1])


def sdpa_math_backward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """A transformers attention function: `sdpa_attention_forward`, with the float32 math backward where a graph
    is built on CPU and the half-precision decode step on CPU computed directly (see the module docstring)."""
    builds_graph = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    covered = query.device.type == "cpu" and not dropout and all(
        kwargs.get(k) is None for k in ("softcap", "position_bias", "s_aux"))
    if covered and not builds_graph and query.shape[2] == 1:
        half = _half_dtype(query)
        if half is not None:
            return _decode_attention(query, key, value, attention_mask, scaling, half), None
    if not (covered and builds_graph):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
    return _SdpaMathBackward.apply(query, key, value, module, attention_mask, scaling, is_causal, kwargs), None


AttentionInterface.register(SDPA_MATH_BACKWARD, sdpa_math_backward)
AttentionMaskInterface.register(SDPA_MATH_BACKWARD, sdpa_mask)


def use_sdpa_math_backward(model: nn.Module) -> bool:
    """Switch a model (or a `PeftModel`'s base) that runs sdpa attention on CPU to `SDPA_MATH_BACKWARD`; True when it
    did. Eager and other implementations, and models on an accelerator, stay as they are."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, PreTrainedModel) or base.config._attn_implementation != "sdpa":
        return False
    if next(base.parameters()).device.type != "cpu":
        return False
    base.set_attn_implementation(SDPA_MATH_BACKWARD)
    return base.config._attn_implementation == SDPA_MATH_BACKWARD


@contextlib.contextmanager
def cpu_math_attention(model: nn.Module) -> Iterator[None]:
    """Run `model` with `SDPA_MATH_BACKWARD` inside the block when it runs sdpa on CPU, restoring sdpa after, so a
    model saved or handed on afterwards names sdpa; other models (already switched, eager, on an accelerator) run
    unchanged. Around sampling (its half-precision decode steps) and the TRL stages' training (the backward)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    switched = use_sdpa_math_backward(base)
    try:
        yield
    finally:
        if switched:
            base.set_attn_implementation("sdpa")
