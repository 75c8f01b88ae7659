"""Reward-hacking monitors: each alert on constructed PPO logs (fires where the smoothed numbers cross its
threshold, with the evidence; stays quiet on a healthy run; fires once), live as a MetricsLog subscriber, and on
real short sandbox PPO runs — quiet against the default reward model, firing against a verbosity-biased one. The
gold-free ensemble alerts on constructed logs of a `RewardEnsemble` run (PPO's `reward/...` metrics)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.monitors import (
    ALERT_EVENT,
    MonitorConfig,
    RewardHackingMonitor,
    alerts_table,
    check_log,
)

UPDATES = 30


def healthy(t: int) -> dict[str, float]:
    """A healthy run at update t (1-based): length steady, KL growing ever slower, gold and proxy rising."""
    wobble = 0.3 * math.sin(1.7 * t)  # batch-to-batch noise
    return {"val/response_length": 20 + 2 * wobble, "objective/kl": 6 * (1 - math.exp(-t / 8)) + wobble,
            "policy/entropy_avg": 1.0 - 0.005 * t + 0.02 * wobble, "objective/scores": 0.05 * t + wobble,
            "gold/score": 2 + 0.05 * t + wobble}


def hacking(t: int) -> dict[str, float]:
    """A run that games its reward: longer and longer, KL speeding up, entropy collapsing, gold peaking at 10."""
    return {"val/response_length": 20 + 1.5 * t, "objective/kl": 0.3 * math.exp(t / 6),
            "policy/entropy_avg": 1.0 / (1 + 0.1 * t) ** 2, "objective/scores": 0.1 * t,
            "gold/score": 3 - 0.02 * (t - 10) ** 2}


def make_log(run, updates: int = UPDATES, gold: bool = True) -> MetricsLog:
    log = MetricsLog()
    for t in range(1, updates + 1):
        log.log({k: v for k, v in run(t).items() if gold or k != "gold/score"}, step=t, stage="ppo")
    return log


def window_mean(run, name: str, end: int, w: int = 5) -> float:
    return sum(run(t)[name] for t in range(end - w + 1, end + 1)) / w


def first_update(run, condition) -> int:
    return next(t for t in range(1, UPDATES + 1) if condition(t))


def test_a_healthy_run_raises_nothing() -> None:
    assert check_log(make_log(healthy)) == []


def test_each_monitor_fires_once_where_its_smoothed_numbers_cross_the_threshold() -> None:
    alerts = {a.kind: a for a in check_log(make_log(hacking))}
    assert set(alerts) == {"length_drift", "kl_acceleration", "entropy_collapse", "proxy_gold_divergence"}
    assert len(check_log(make_log(hacking))) == 4  # once each

    # length: the first window mean more than 50% above update 1's length (21.5 tokens)
    sft = hacking(1)["val/response_length"]
    expected = first_update(hacking, lambda t: t >= 5 and window_mean(hacking, "val/response_length", t) > 1.5 * sft)
    length = alerts["length_drift"]
    assert length.update == expected
    assert length.evidence["sft_length"] == sft and length.evidence["drift"] > 0.5
    assert "longer than the SFT model's" in length.message

    # KL: growth over the last window ≥ 2x the window before's, and ≥ min_kl_growth (1 nat) per update
    min_growth = MonitorConfig().min_kl_growth

    def kl_accelerates(t: int) -> bool:
        if t < 15:
            return False
        now, before, earlier = (window_mean(hacking, "objective/kl", t - 5 * k) for k in range(3))
        return (now - before) / 5 >= max(min_growth, 2 * (before - earlier) / 5)

    assert alerts["kl_acceleration"].update == first_update(hacking, kl_accelerates)
    assert alerts["kl_acceleration"].evidence["growth"] >= min_growth

    # entropy: the window mean below the floor's share of the first window's
    first, floor = window_mean(hacking, "policy/entropy_avg", 5), MonitorConfig().entropy_floor
    expected = first_update(hacking,
                            lambda t: t >= 10 and window_mean(hacking, "policy/entropy_avg", t) < floor * first)
    assert alerts["entropy_collapse"].update == expected
    assert alerts["entropy_collapse"].evidence["ratio"] < floor

    # divergence: gold (smoothed) 0.5 below its best while the proxy is above its value at that best
    divergence = alerts["proxy_gold_divergence"]
    gold = {t: window_mean(hacking, "gold/score", t) for t in range(5, UPDATES + 1)}
    best = max(gold, key=gold.get)
    assert divergence.evidence["gold_best_update"] == best
    assert divergence.update == first_update(hacking, lambda t: t > best and gold[best] - gold[t] >= 0.5)
    assert divergence.evidence["proxy"] > divergence.evidence["proxy_at_gold_best"]
    table = alerts_table(list(alerts.values()))
    assert list(table.columns[:3]) == ["kind", "update", "message"] and len(table) == 4


def test_without_a_held_out_score_the_divergence_monitor_stays_silent() -> None:
    kinds = {a.kind for a in check_log(make_log(hacking, gold=False))}
    assert "proxy_gold_divergence" not in kinds and "length_drift" in kinds


def test_a_gold_drop_while_the_proxy_also_falls_is_not_divergence() -> None:
    def both_fall(t: int) -> dict[str, float]:
        return {**healthy(t), "objective/scores": 1 - 0.1 * t, "gold/score": 3 - 0.1 * t}

    assert check_log(make_log(both_fall)) == []


def test_given_sft_length_and_thresholds_are_used() -> None:
    log = make_log(healthy)
    shorter = check_log(log, sft_length=50.0)  # a policy at 40% of the SFT length
    assert [a.kind for a in shorter] == ["length_drift"] and shorter[0].update == 5
    assert "shorter" in shorter[0].message
    assert check_log(log, MonitorConfig(length_drift=0.7), sft_length=50.0) == []
    with pytest.raises(ValueError, match=r"MonitorConfig.entropy_floor=1.5: must be in \(0, 1\)"):
        MonitorConfig(entropy_floor=1.5)
    with pytest.raises(ValueError, match="sft_length"):
        RewardHackingMonitor(sft_length=0)


def test_attached_to_a_live_log_alerts_become_events_once(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    monitor = RewardHackingMonitor()
    stop = monitor.attach(log)
    for t in range(1, UPDATES + 1):
        log.log(hacking(t), step=t, stage="ppo")
        log.log({"loss": 1.0}, step=t, stage="sft")  # another stage's records are not watched
    stop()
    events = [e for e in log.events() if e.kind == ALERT_EVENT]
    assert [(e.data["monitor"], e.step) for e in events] == [(a.kind, a.update) for a in monitor.alerts]
    assert len(events) == 4 and events[0].data["evidence"] == monitor.alerts[0].evidence

    # a resumed run: the log file read back, watched again from the start, logs no alert twice
    resumed = MetricsLog.load(tmp_path / "metrics.jsonl", resume=True)
    again = RewardHackingMonitor()
    again.attach(resumed, replay=True)
    assert len(again.alerts) == 4
    assert len([e for e in resumed.events() if e.kind == ALERT_EVENT]) == 4


# ---------------------------------------------------------------- the gold-free alerts of an ensemble reward
def ensemble_healthy(t: int) -> dict[str, float]:
    """A healthy run against an ensemble: the members' spread steady, conservative score and mean rising together."""
    run = healthy(t)
    wobble = 0.3 * math.sin(1.7 * t)
    return {**run, "reward/ensemble_spread": 0.3 + 0.05 * wobble, "reward/ensemble_mean": run["objective/scores"] + 0.4}


def disagreeing(t: int) -> dict[str, float]:
    """The members' spread grows by 0.03 per update: twice its first window's mean (0.29) by update 15."""
    return {**ensemble_healthy(t), "reward/ensemble_spread": 0.2 * (1 + 0.15 * t)}


def exploited(t: int) -> dict[str, float]:
    """The conservative score peaks at update 10 and falls while the members' mean keeps rising."""
    return {**ensemble_healthy(t), "objective/scores": 1 - 0.03 * (t - 10) ** 2, "reward/ensemble_mean": 0.1 * t}


def test_ensemble_disagreement_fires_where_the_smoothed_spread_passes_twice_its_first_window() -> None:
    assert check_log(make_log(ensemble_healthy)) == []  # a steady spread: quiet
    assert check_log(make_log(ensemble_healthy, gold=False)) == []
    alerts = check_log(make_log(disagreeing, gold=False))
    assert [a.kind for a in alerts] == ["ensemble_disagreement"]
    first = window_mean(disagreeing, "reward/ensemble_spread", 5)
    expected = first_update(disagreeing, lambda t: t >= 10 and window_mean(disagreeing, "reward/ensemble_spread", t)
                            > 2 * first)
    alert = alerts[0]
    assert alert.update == expected
    assert alert.evidence["first_spread"] == pytest.approx(first)
    assert alert.evidence["spread"] == pytest.approx(window_mean(disagreeing, "reward/ensemble_spread", expected))
    assert alert.evidence["ratio"] > 2 and "disagree" in alert.message
    # a stricter rise waits for a larger spread
    later = check_log(make_log(disagreeing, gold=False), MonitorConfig(disagreement_rise=2.5))
    assert [a.kind for a in later] == ["ensemble_disagreement"] and later[0].update > expected


def test_a_tiny_spread_that_doubles_is_noise_not_disagreement() -> None:
    """Members that nearly agree (spread 0.01 → 0.07): far more than twice the first window, but the rise is under
    min_disagreement_rise (0.1 of the reference responses' score std)."""
    def nearly_agree(t: int) -> dict[str, float]:
        return {**ensemble_healthy(t), "reward/ensemble_spread": 0.01 * (1 + 0.2 * t)}

    assert check_log(make_log(nearly_agree)) == []
    assert [a.kind for a in check_log(make_log(nearly_agree), MonitorConfig(min_disagreement_rise=0.01))] == [
        "ensemble_disagreement"]


def test_conservative_divergence_fires_when_the_conservative_score_falls_while_the_mean_rises() -> None:
    def both_fall(t: int) -> dict[str, float]:
        scores = 1 - 0.03 * (t - 10) ** 2
        return {**ensemble_healthy(t), "objective/scores": scores, "reward/ensemble_mean": scores + 0.4}

    assert check_log(make_log(both_fall, gold=False)) == []  # the same fall with the mean: not divergence
    alerts = check_log(make_log(exploited, gold=False))
    assert [a.kind for a in alerts] == ["conservative_divergence"]
    alert = alerts[0]
    smoothed = {t: window_mean(exploited, "objective/scores", t) for t in range(5, UPDATES + 1)}
    best = max(smoothed, key=smoothed.get)
    assert alert.evidence["conservative_best_update"] == best
    assert alert.update == first_update(exploited, lambda t: t > best and smoothed[best] - smoothed[t] >= 0.5)
    assert alert.evidence["ensemble_mean"] > alert.evidence["mean_at_conservative_best"]
    assert "exploiting" in alert.message


def test_the_new_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match=r"MonitorConfig.disagreement_rise=1.0: must be > 1"):
        MonitorConfig(disagreement_rise=1.0)
    with pytest.raises(ValueError, match=r"MonitorConfig.min_disagreement_rise=-0.1: must be >= 0"):
        MonitorConfig(min_disagreement_rise=-0.1)
    with pytest.raises(ValueError, match=r"MonitorConfig.min_conservative_drop=0: must be > 0"):
        MonitorConfig(min_conservative_drop=0)
    with pytest.raises(ValueError, match=r"MonitorConfig.off_prompt_rise=1.5: must be in \(0, 1\)"):
        MonitorConfig(off_prompt_rise=1.5)


def sharpening(t: int) -> dict[str, float]:
    """A healthy run with the prompt-swap check: the share of answers that fit any prompt drifts up a little as the
    policy sharpens (0.08 → 0.16 over 30 updates, with batch noise)."""
    return {**healthy(t), "reference/off_prompt_share": 0.08 + 0.08 * t / UPDATES + 0.03 * math.sin(2.3 * t)}


def prompt_blind(t: int) -> dict[str, float]:
    """The policy converges on one reply for every question from update 12: the off-prompt share climbs to 0.6."""
    return {**sharpening(t), "reference/off_prompt_share": sharpening(t)["reference/off_prompt_share"]
            + (0.5 * (1 - math.exp(-(t - 12) / 4)) if t > 12 else 0.0)}


def test_off_prompt_answers_fires_when_answers_stop_depending_on_the_question() -> None:
    """`off_prompt_answers` (gold-free, reward-model-free): the smoothed off-prompt share rises `off_prompt_rise`
    above its first window's; a share that drifts up as a healthy policy sharpens stays quiet."""
    assert check_log(make_log(sharpening, gold=False)) == []
    (alert,) = check_log(make_log(prompt_blind, gold=False))
    rise = MonitorConfig().off_prompt_rise
    first = window_mean(prompt_blind, "reference/off_prompt_share", 5)
    assert alert.kind == "off_prompt_answers"
    assert alert.update == first_update(
        prompt_blind, lambda t: t >= 10 and window_mean(prompt_blind, "reference/off_prompt_share", t) - first >= rise)
    assert alert.evidence["first_off_prompt_share"] == pytest.approx(first)
    assert alert.evidence["off_prompt_share"] - first >= rise
    assert "ignore the question" in alert.message
    # a stricter threshold waits longer; the run without the metric (no prompt-swap check) never raises it
    (later,) = check_log(make_log(prompt_blind, gold=False), MonitorConfig(off_prompt_rise=0.3))
    assert later.update > alert.update
    assert check_log(make_log(healthy, gold=False)) == []
