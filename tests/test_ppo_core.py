"""Known answers (hand computed, ../shared/DESIGN.md) and properties of the PPO tensor functions."""

import math
import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_widgets.stages.ppo import core

T = torch.tensor


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


# ---------------------------------------------------------------- known answers
def test_kl_estimators_known_answers():
    lp, ref = T([[-1.0, -2.0, -0.5]]), T([[-1.5, -1.0, -0.5]])
    assert close(core.per_token_kl(lp, ref, "k1"), [[0.5, -1.0, 0.0]])
    assert close(core.per_token_kl(lp, ref, "k3"), [[0.10653, 0.71828, 0.0]])
    with pytest.raises(ValueError, match="k2"):
        core.per_token_kl(lp, ref, "k2")


def test_kl_shaped_rewards_put_the_score_at_the_last_real_token():
    lp, ref = T([[-1.0, -2.0, -0.5]]), T([[-1.5, -1.0, -0.5]])
    rewards, non_score, kl = core.compute_rewards(T([2.0]), lp, ref, torch.ones(1, 3), kl_coef=0.1)
    assert close(rewards, [[-0.05, 0.1, 2.0]])
    assert close(non_score, [[-0.05, 0.1, 0.0]])
    assert close(kl, [[0.5, -1.0, 0.0]])


def test_rewards_with_padding_score_at_eos_slot_and_zero_after():
    lp = torch.full((2, 4), -1.0)
    ref = torch.full((2, 4), -1.5)
    mask = T([[1, 1, 0, 0], [1, 1, 1, 1]])
    rewards, _, kl = core.compute_rewards(T([3.0, -1.0]), lp, ref, mask, kl_coef=0.2)
    assert close(rewards[0], [-0.1, 2.9, 0.0, 0.0])
    assert close(rewards[1], [-0.1, -0.1, -0.1, -1.1])
    assert close(kl[0, 2:], [0.0, 0.0])


def test_gae_known_answer():
    adv, ret = core.gae(T([[0.0, 0.0, 1.0]]), T([[0.5, 0.5, 0.5]]), torch.ones(1, 3), gamma=1.0, lam=0.95)
    assert close(adv, [[0.45125, 0.475, 0.5]])
    assert close(ret, [[0.95125, 0.975, 1.0]])


def test_policy_loss_known_answers():
    adv, mask = T([1.0, -1.0]), torch.ones(2)
    loss, stats = core.ppo_policy_loss(torch.log(T([1.5, 0.5])), torch.zeros(2), adv, mask, 0.2)
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert stats["clipfrac"] == pytest.approx(1.0)
    loss, stats = core.ppo_policy_loss(torch.log(T([0.9, 1.1])), torch.zeros(2), adv, mask, 0.2)
    assert loss.item() == pytest.approx(0.1, abs=1e-6)
    assert stats["clipfrac"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0)


def test_value_loss_known_answer_and_unclipped_switch():
    loss, stats = core.ppo_value_loss(T([2.0]), T([1.0]), T([3.0]), torch.ones(1), 0.2)
    assert loss.item() == pytest.approx(1.62)
    assert stats["clipfrac"] == 1.0
    loss, _ = core.ppo_value_loss(T([2.0]), T([1.0]), T([3.0]), torch.ones(1), None)
    assert loss.item() == pytest.approx(0.5)


@pytest.mark.parametrize(("kl", "expected"), [(12.0, 0.151536), (6.0, 0.15), (3.0, 0.148464)])
def test_adaptive_kl_controller_known_answers(kl, expected):
    ctl = core.AdaptiveKLController(0.15, target=6.0, horizon=10_000)
    ctl.update(kl, 512)
    assert ctl.value == pytest.approx(expected, abs=1e-9)


def test_fixed_kl_controller_never_moves():
    ctl = core.FixedKLController(0.05)
    ctl.update(100.0, 512)
    assert ctl.value == 0.05


def test_missing_eos_penalty_only_hits_truncated_responses():
    out = core.apply_missing_eos_penalty(T([1.0, 1.0]), T([True, False]), 1.0)
    assert close(out, [1.0, 0.0])


def test_logprobs_and_entropy_match_torch_distributions():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    dist = torch.distributions.Categorical(logits=logits / 0.7)
    assert close(core.logprobs_from_logits(logits, labels, 0.7), dist.log_prob(labels))
    assert close(core.entropy_from_logits(logits / 0.7), dist.entropy())


def test_masked_statistics_ignore_padding():
    x = T([[1.0, 2.0, 3.0, 100.0]])
    mask = T([[1, 1, 1, 0]])
    assert core.masked_mean(x, mask).item() == pytest.approx(2.0)
    assert core.masked_var(x, mask).item() == pytest.approx(1.0)
    assert core.masked_var(x, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert core.masked_whiten(x, mask)[0, 3].item() == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        core.masked_var(x, T([[1, 0, 0, 0]]))


# ---------------------------------------------------------------- properties
shapes = st.tuples(st.integers(1, 4), st.integers(2, 7))


def random_batch(seed: int, b: int, t: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).float()
    return torch.randn(b, t, generator=g), torch.randn(b, t, generator=g), mask


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), gamma=st.floats(0.5, 1.0))
def test_gae_with_lambda_one_is_discounted_return_minus_value(shape, seed, gamma):
    rewards, values, mask = random_batch(seed, *shape)
    adv, ret = core.gae(rewards, values, mask, gamma=gamma, lam=1.0)
    b, t = shape
    for i in range(b):
        n = int(mask[i].sum())
        for s in range(n):
            direct = sum(gamma ** (k - s) * rewards[i, k].item() for k in range(s, n))
            assert ret[i, s].item() == pytest.approx(direct, abs=1e-4)
            assert adv[i, s].item() == pytest.approx(direct - values[i, s].item(), abs=1e-4)
        assert torch.all(adv[i, n:] == 0) and torch.all(ret[i, n:] == 0)


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(2, 5), st.integers(2, 7)), seed=st.integers(0, 10_000))
def test_whitening_gives_mean_zero_and_unit_variance_over_the_mask(shape, seed):
    x, _, mask = random_batch(seed, *shape)
    x = x * 5 + 3
    w = core.masked_whiten(x, mask)
    assert core.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert core.masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-3)
    kept = core.masked_whiten(x, mask, shift_mean=False)
    assert core.masked_mean(kept, mask).item() == pytest.approx(core.masked_mean(x, mask).item(), abs=1e-4)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000))
def test_k3_is_nonnegative_and_both_estimators_vanish_on_equal_policies(shape, seed):
    lp, ref, _ = random_batch(seed, *shape)
    assert torch.all(core.per_token_kl(lp, ref, "k3") >= -1e-6)
    for kind in core.KL_ESTIMATORS:
        assert torch.all(core.per_token_kl(lp, lp.clone(), kind) == 0)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), clip=st.floats(0.05, 0.5))
def test_policy_loss_at_ratio_one_is_minus_mean_advantage_and_unclipped(shape, seed, clip):
    lp, adv, mask = random_batch(seed, *shape)
    loss, stats = core.ppo_policy_loss(lp, lp.detach().clone(), adv, mask, clip)
    assert loss.item() == pytest.approx(-core.masked_mean(adv, mask).item(), abs=1e-5)
    assert stats["clipfrac"] == 0.0 and stats["approx_kl"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0)


def test_policy_gradient_vanishes_where_clipped():
    new = torch.log(T([1.5, 0.5])).requires_grad_()
    loss, _ = core.ppo_policy_loss(new, torch.zeros(2), T([1.0, -1.0]), torch.ones(2), 0.2)
    loss.backward()
    assert torch.all(new.grad == 0)
    new = torch.log(T([1.1, 0.9])).requires_grad_()
    loss, _ = core.ppo_policy_loss(new, torch.zeros(2), T([1.0, -1.0]), torch.ones(2), 0.2)
    loss.backward()
    assert close(new.grad, [-0.55, 0.45])


def test_adaptive_kl_controller_is_bounded_per_update():
    ctl = core.AdaptiveKLController(0.1, target=1.0, horizon=100)
    ctl.update(1e9, 100)
    assert ctl.value == pytest.approx(0.12)
    ctl.update(float("nan"), 100)
    assert ctl.value == pytest.approx(0.12)
    assert math.isfinite(ctl.value)


def test_value_clip_range_zero_turns_clipping_off():
    """cliprange_value=0 is 'no clipping' (PPOConfig's help), not 'clip to ±0', which would pin V to V_old."""
    loss, stats = core.ppo_value_loss(T([2.0]), T([1.0]), T([3.0]), torch.ones(1), 0.0)
    assert loss.item() == pytest.approx(0.5)  # ½·(2 − 3)², not ½·(1 − 3)²
    assert stats["clipfrac"] == 0.0
    new = T([2.0]).requires_grad_()
    core.ppo_value_loss(new, T([1.0]), T([3.0]), torch.ones(1), 0.0)[0].backward()
    assert new.grad.item() == pytest.approx(-1.0)  # the value still learns


def all_reduce_in_threads(*work):
    """Run one function per emulated process in threads; each gets a `sum_across` that, like an all-reduce,
    returns the sum of what every process passed at that call. Returns each function's result."""
    barrier, slots, results = threading.Barrier(len(work)), [None] * len(work), [None] * len(work)

    def run(i, fn):
        def sum_across(t):
            slots[i] = t
            barrier.wait()
            total = sum(slots)
            barrier.wait()
            return total
        results[i] = fn(sum_across)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(work)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(st.integers(1, 4), st.integers(2, 7)), seed=st.integers(0, 10_000), shift=st.booleans())
def test_whitening_across_processes_equals_whitening_the_whole_batch(shape, seed, shift):
    """Two processes' shards whitened with `sum_across` (an all-reduce) come out as the rows of the whole batch
    whitened in one piece — and not as each shard whitened alone."""
    (x1, _, m1), (x2, _, m2) = random_batch(seed, *shape), random_batch(seed + 1, *shape)
    x1, x2 = x1 * 3 + 1, x2 - 2
    got = all_reduce_in_threads(lambda s: core.masked_whiten(x1, m1, shift_mean=shift, sum_across=s),
                                lambda s: core.masked_whiten(x2, m2, shift_mean=shift, sum_across=s))
    whole = core.masked_whiten(torch.cat([x1, x2]), torch.cat([m1, m2]), shift_mean=shift)
    torch.testing.assert_close(torch.cat(got), whole, rtol=1e-5, atol=1e-5)
    if m1.sum() > 1:
        assert not torch.allclose(core.masked_whiten(x1, m1, shift_mean=shift), got[0], atol=1e-3)


def test_float32_linear_computes_in_float32_under_autocast_whatever_its_weights_dtype():
    from rlhf_widgets.runtime.precision import Float32Linear

    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 2)
    x = torch.randn(3, 8)
    expected = layer(x)
    layer.__class__ = Float32Linear
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer(x), expected)
        layer.to(torch.bfloat16)  # a 4-bit model's head, kept in its compute dtype
        out = layer(x.to(torch.bfloat16))
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=0.05)
