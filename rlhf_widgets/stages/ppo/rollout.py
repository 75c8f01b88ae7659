"""Steps 1–4 of a PPO update: sample, truncate at EOS, log-probs / reference log-probs / values, score.

`make_rollout` produces one `Rollout`; the trainer adds the KL-shaped rewards and advantages (steps 5–6,
`shape_rewards`) and consumes it in the PPO epochs. Shapes: B rollouts, P prompt tokens (left-padded), T
response tokens (the longest response of the batch), H hidden size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from rlhf_widgets.runtime.data import last_user_content
from rlhf_widgets.runtime.generation import encode_prompts, exact_sampling
from rlhf_widgets.runtime.reward_protocol import RewardFunction, score_with_members
from rlhf_widgets.stages.ppo import core
from rlhf_widgets.stages.ppo.stopping import TrainingStopped
from rlhf_widgets.stages.ppo.timing import NO_CLOCK, PhaseClock


@dataclass
class Rollout:
    """One batch of experience, as sampled and scored (steps 1–4), then shaped (steps 5–6)."""

    prompts: list
    """B prompts as given (strings or chat messages)"""
    prompt_texts: list[str]
    """B prompts' last user message (sample tables, gold scores)"""
    texts: list[str]
    """B decoded responses (up to the first EOS, special tokens removed)"""
    sequences: torch.Tensor
    """(B, P + T) prompt and response ids; pad after each response's first EOS"""
    attention_mask: torch.Tensor
    """(B, P + T) 1 on real tokens (the prompt's left padding and the response's tail are 0)"""
    responses: torch.Tensor
    """(B, T) response ids, pad after the first EOS"""
    response_mask: torch.Tensor
    """(B, T) float, 1 on response tokens up to and including the first stop token"""
    contains_eos: torch.Tensor
    """(B,) bool, a stop token (EOS or the family's turn end) ended the response (else it hit max_new_tokens)"""
    logprobs: torch.Tensor
    """(B, T) log π_old(token) under logits / temperature"""
    ref_logprobs: torch.Tensor
    """(B, T) log π_ref(token) under logits / temperature"""
    values: torch.Tensor
    """(B, T) V_old before each response token"""
    value_trunk: torch.Tensor | None
    """(B, P + T, H) frozen hidden state entering the value adapter's first layer; None when it spans them all"""
    scores: torch.Tensor
    """(B,) reward scores, the missing-EOS penalty applied"""
    member_scores: torch.Tensor | None = None
    """(K, B) each member's scores when the reward is an ensemble (`rewards.EnsembleReward`), the missing-EOS penalty
    applied to every member alike (so `scores` is still their combination: worst, mean, mean − λ·variance); None
    for any other reward"""
    rewards: torch.Tensor | None = None
    """(B, T) KL-shaped per-token rewards: −β·KL everywhere, + the score at the last response token (step 5)"""
    non_score_rewards: torch.Tensor | None = None
    """(B, T) the −β·KL part of `rewards`"""
    kl: torch.Tensor | None = None
    """(B, T) per-token KL estimate (k1 or k3)"""
    advantages: torch.Tensor | None = None
    """(B, T) GAE advantages, whitened when configured (step 6)"""
    returns: torch.Tensor | None = None
    """(B, T) value targets: GAE advantages (before whitening) + values"""

    @property
    def context_length(self) -> int:
        """P: prompt tokens before the first response token."""
        return self.sequences.shape[1] - self.responses.shape[1]

    def __len__(self) -> int:
        return len(self.prompts)


class SampledLogprobs(LogitsProcessor):
    """Keeps the log-prob under softmax(logits / T) of every token `generate` samples: the rollout's "old"
    log-probs without a second policy forward over the batch (TRL's PPO read them from its generation logits
    too), computed by the same `core.logprobs_from_logits` as the training forwards.

    Called once per generated token with that step's logits; the token sampled from them is only known at the
    next call (or, for the last one, from the output), so one (B, V) step is held at a time. It returns the
    logits unchanged and runs before the temperature warper, so the distribution it records is the one sampled
    from.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self._pending: torch.Tensor | None = None
        self._picked: list[torch.Tensor] = []

    def _pick(self, tokens: torch.Tensor) -> torch.Tensor:
        return core.logprobs_from_logits(self._pending.unsqueeze(1), tokens.unsqueeze(1), self.temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is not None:
            self._picked.append(self._pick(input_ids[:, -1]))
        self._pending = scores.detach().clone()  # later processors may work in place
        return scores

    def logprobs(self, responses: torch.Tensor) -> torch.Tensor:
        """(B, T_new) sampled tokens → (B, T_new) their log-probs."""
        if self._pending is None or len(self._picked) + 1 != responses.shape[1]:
            raise RuntimeError(f"SampledLogprobs saw {len(self._picked) + int(self._pending is not None)} "
                               f"generation steps for {responses.shape[1]} response tokens")
        return torch.cat([*self._picked, self._pick(responses[:, -1])], dim=1)


def forward_inputs(sequences: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Model inputs with position ids from the mask: left padding must not shift the real tokens' positions."""
    return {"input_ids": sequences, "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0)}


@torch.no_grad()
def make_rollout(backend, tokenizer, prompts: Sequence, reward: RewardFunction, *, temperature: float,
                 max_new_tokens: int, missing_eos_penalty: float, recorded_logprobs: bool = True,
                 forward_batch_size: int = 32, device: torch.device | str = "cpu",
                 clock: PhaseClock = NO_CLOCK,
                 reward_precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                 ) -> Rollout:
    """Sample one response per prompt from the policy and measure everything the PPO update needs.

    Args:
        backend: a `SharedBackbone` or `SeparateModels`.
        reward: the reward function `(prompts, responses) -> scores`; an ensemble (`rewards.EnsembleReward`) is
            scored once per member and its members' scores kept in `Rollout.member_scores`.
        recorded_logprobs: take the old log-probs from the sampling step (True) or from one more no-cache
            policy forward over the batch (False).
        forward_batch_size: rollouts per no-grad forward for log-probs and values.
        clock: times the phases (`generation`, `policy_forward`, `reference_forward`, `value_forward`, `reward`).
        reward_precision: the context the reward is called in (the trainer's: float32 outside its autocast; a
            reward model scores in its own precision).
    Raises `TrainingStopped` on non-finite log-probs, values or scores.
    """
    # 1. sample responses from the current policy (left-padded queries, stop at any stop token), from exactly
    #    softmax(logits / T): the checkpoint's generation_config (e.g. a repetition penalty) is swapped out
    with clock("generation"):
        query = encode_prompts(tokenizer, prompts, device)
        context = query["input_ids"].shape[1]
        sampled = SampledLogprobs(temperature) if recorded_logprobs else None
        with exact_sampling(backend.sampling_model, tokenizer) as stops:
            out = backend.generate(
                **query, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                logits_processor=LogitsProcessorList([sampled] if sampled else []),
            )
        logprobs = sampled.logprobs(out[:, context:]) if sampled else None
    responses = out[:, context:]
    # 2. truncate after the first stop token (EOS or the turn end); the mask covers the response up to and
    #    including it — the reward is read there, and only responses without one get the missing-EOS penalty
    is_eos = torch.isin(responses, torch.tensor(stops, device=responses.device))
    contains_eos = is_eos.any(dim=1)
    last = torch.where(contains_eos, is_eos.int().argmax(dim=1), responses.shape[1] - 1)
    positions = torch.arange(responses.shape[1], device=responses.device).unsqueeze(0)
    r_mask = (positions <= last.unsqueeze(1)).long()
    responses = torch.where(r_mask.bool(), responses, torch.full_like(responses, tokenizer.pad_token_id))
    seq = torch.cat([query["input_ids"], responses], dim=1)
    mask = torch.cat([query["attention_mask"], r_mask], dim=1)
    keep = responses.shape[1] + 1  # LM head on positions context-1 … end: the ones that predict the response
    del out, sampled

    # 3. log-probs of the policy (unless recorded while sampling) and the reference, and values — in chunks
    policy_lp, ref_lp, values, trunks = [], [], [], []
    for i in range(0, len(seq), forward_batch_size):
        inputs = forward_inputs(seq[i : i + forward_batch_size], mask[i : i + forward_batch_size])
        labels = responses[i : i + forward_batch_size]
        if logprobs is None:
            with clock("policy_forward"):
                logits = backend.policy_logits(**inputs, logits_to_keep=keep)[:, :-1]
                policy_lp.append(core.logprobs_from_logits(logits, labels, temperature))
                del logits
        # + the frozen lower layers of the value network (None when the value adapter spans them all)
        with clock("reference_forward"):
            ref, trunk = backend.reference_logits(**inputs, logits_to_keep=keep, return_trunk=True)
            ref_lp.append(core.logprobs_from_logits(ref[:, :-1], labels, temperature))
            del ref
        trunks.append(trunk)
        with clock("value_forward"):
            values.append(backend.values(**inputs, trunk=trunk)[:, context - 1 : -1])
    logprobs = torch.cat(policy_lp) if logprobs is None else logprobs

    # 4. score the decoded responses (an ensemble: each member once, combined from those scores); penalise those
    #    cut off before EOS
    with clock("reward"), reward_precision():
        texts = [tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip()
                 for r, m in zip(responses, r_mask, strict=True)]
        scores, member_scores = score_with_members(reward, list(prompts), texts)
    scores = scores.to(seq.device)
    if missing_eos_penalty:
        scores = core.apply_missing_eos_penalty(scores, contains_eos, missing_eos_penalty)
        if member_scores is not None:  # (K, B): the (B,) cut-off flags broadcast over the members
            member_scores = core.apply_missing_eos_penalty(member_scores, contains_eos.cpu(), missing_eos_penalty)
    rollout = Rollout(
        prompts=list(prompts), prompt_texts=[last_user_content(p) for p in prompts], texts=texts,
        sequences=seq, attention_mask=mask, responses=responses, response_mask=r_mask.float(),
        contains_eos=contains_eos, logprobs=logprobs, ref_logprobs=torch.cat(ref_lp), values=torch.cat(values),
        value_trunk=torch.cat(trunks) if trunks[0] is not None else None, scores=scores, member_scores=member_scores,
    )
    for name, what in (("logprobs", "log-probs"), ("ref_logprobs", "reference log-probs"), ("values", "values"),
                       ("scores", "reward scores")):
        if not torch.isfinite(getattr(rollout, name)).all():
            raise TrainingStopped(f"non-finite {what} in the rollout")
    return rollout


def other_prompts(prompts: Sequence) -> list | None:
    """Each prompt's next different prompt in the batch (cyclically) — the prompt an answer is scored after to see
    how much its score depends on what was asked; None when the batch has a single distinct prompt."""
    n = len(prompts)
    swapped = []
    for i, prompt in enumerate(prompts):
        other = next((prompts[(i + k) % n] for k in range(1, n) if prompts[(i + k) % n] != prompt), None)
        if other is None:
            return None
        swapped.append(other)
    return swapped


@torch.no_grad()
def reference_logprob_sums(backend, tokenizer, prompts: Sequence, responses: torch.Tensor,
                           response_mask: torch.Tensor, *, temperature: float, forward_batch_size: int = 32
                           ) -> torch.Tensor:
    """(B,) the reference model's log-probability of each response (its tokens under `response_mask`) following
    `prompts[i]` — the same quantity as `Rollout.ref_logprobs` summed, for any prompts: the prompt-swap check
    scores a batch's answers after other prompts with it."""
    query = encode_prompts(tokenizer, prompts, responses.device)
    seq = torch.cat([query["input_ids"], responses], dim=1)
    mask = torch.cat([query["attention_mask"], response_mask.long()], dim=1)
    keep = responses.shape[1] + 1
    sums = []
    for i in range(0, len(seq), forward_batch_size):
        inputs = forward_inputs(seq[i : i + forward_batch_size], mask[i : i + forward_batch_size])
        ref = backend.reference_logits(**inputs, logits_to_keep=keep)
        lp = core.logprobs_from_logits(ref[:, :-1], responses[i : i + forward_batch_size], temperature)
        sums.append((lp.float() * response_mask[i : i + forward_batch_size]).sum(1))
    return torch.cat(sums)


def shape_rewards(rollout: Rollout, *, kl_coef: float, kl_estimator: str, gamma: float, lam: float,
                  whiten_rewards: bool, whiten_advantages: bool, sum_across=None) -> Rollout:
    """Steps 5–6, in place: KL-shaped per-token rewards, then GAE advantages and returns (whitened as asked; with
    `sum_across` — a sum over processes — the whitening uses every process's statistics)."""
    mask = rollout.response_mask
    # 5. −β·KL at every token, the score at the last real token (the EOS slot)
    rewards, rollout.non_score_rewards, rollout.kl = core.compute_rewards(
        rollout.scores, rollout.logprobs, rollout.ref_logprobs, mask, kl_coef, kind=kl_estimator)
    if whiten_rewards:
        rewards = core.masked_whiten(rewards, mask, shift_mean=False, sum_across=sum_across)
    rollout.rewards = rewards
    # 6. GAE (γ=1, λ=0.95 by default) and advantage whitening
    advantages, rollout.returns = core.gae(rewards, rollout.values, mask, gamma=gamma, lam=lam)
    rollout.advantages = (core.masked_whiten(advantages, mask, sum_across=sum_across) if whiten_advantages
                          else advantages)
    return rollout
