"""Reward-hacking monitors: alerts, with the evidence, computed from a PPO run's `MetricsLog`.

Seven signs that a policy is gaming its reward rather than getting better (Gao et al. 2022; "The N+
Implementation Details of RLHF with PPO", Huang et al. 2024, on what to watch):

- ``length_drift``: the mean response length (``val/response_length``, tokens) has moved from the SFT
  model's by more than ``length_drift`` of it — a reward model that likes long (or short) answers;
- ``kl_acceleration``: the KL to the reference (``objective/kl``) grows faster and faster — its growth per
  update over the last ``window`` updates is at least ``kl_acceleration`` times that of the window before,
  and at least ``min_kl_growth`` nats per update;
- ``entropy_collapse``: the per-token entropy (``policy/entropy_avg``) has fallen below ``entropy_floor`` of
  its first window's — the policy keeps saying one thing;
- ``proxy_gold_divergence`` (only where a held-out score is logged, ``gold/score``: the sandbox's gold, or a
  held-out judge): the held-out score has fallen at least ``min_gold_drop`` below its best while the proxy
  reward (``objective/scores``) has kept rising since then — overoptimization;
- ``ensemble_disagreement`` (only where the reward is a `RewardEnsemble`: PPO logs ``reward/ensemble_spread``, the
  members' standard deviation per response, averaged over the batch): the spread has risen above
  ``disagreement_rise`` times its first window's mean, and by at least ``min_disagreement_rise``;
- ``conservative_divergence`` (the same runs: ``reward/ensemble_mean``, the members' mean score): the conservative
  score PPO optimises (``objective/scores``, the ensemble's combination: worst member, or mean − λ·variance) has
  fallen at least ``min_conservative_drop`` below its best while the members' mean has kept rising since then;
- ``off_prompt_answers`` (where PPO runs the prompt-swap check, ``PPOConfig.prompt_swap_check``: it logs
  ``reference/off_prompt_share``, the share of the policy's answers the reference model finds less than e times as
  likely after their own prompt as after another): that share has risen ``off_prompt_rise`` above its first
  window's — the policy gives more and more answers that do not depend on the question, one reply for every
  customer. It reads neither gold nor the reward model, so it also sees the flaws every member of an ensemble
  shares (a reward model that scores an answer the same whatever was asked).

The last three need no gold. Members of an ensemble agree where they were trained and disagree where the policy
leaves that data (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization"; Eisenstein et al.
2023, "Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking"): rising
disagreement says the policy is being scored where the reward model is guessing, and a mean that rises while the
worst member (or the variance-penalised mean) falls says some members are being exploited — proxy–gold
divergence with the conservative score in the gold's place. Errors every member shares stay invisible to both
(Eisenstein et al.): quiet ensemble monitors are no proof of a healthy run.

Every series is smoothed by a trailing mean over ``window`` updates before it is compared, so one noisy
batch does not raise an alert. Each kind of alert fires once per run, at the first update where it holds.

Offline: ``check_log(log)`` returns the alerts of a finished run. Live: ``RewardHackingMonitor().attach(log)``
watches the log as the trainer writes it and logs each alert as an event of kind ``"alert"`` (data: the
monitor's kind and its evidence), which any view of the log can show.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

from rlhf_widgets.runtime.metrics import Event, MetricRecord, MetricsLog
from rlhf_widgets.runtime.validation import check_fields

LENGTH = "val/response_length"
KL = "objective/kl"
TOKEN_ENTROPY = "policy/entropy_avg"
PROXY = "objective/scores"
GOLD = "gold/score"
SPREAD = "reward/ensemble_spread"
ENSEMBLE_MEAN = "reward/ensemble_mean"
OFF_PROMPT = "reference/off_prompt_share"
ALERT_EVENT = "alert"
"""The event kind alerts are logged under."""
ALERT_KINDS: tuple[str, ...] = ("length_drift", "kl_acceleration", "entropy_collapse", "proxy_gold_divergence",
                                 "ensemble_disagreement", "conservative_divergence", "off_prompt_answers")
OVEROPTIMIZATION_KINDS: tuple[str, ...] = ("proxy_gold_divergence", "ensemble_disagreement", "conservative_divergence",
                                           "off_prompt_answers")
"""The alerts that say the reward model is being exploited (a held-out score or the ensemble's members disagree
with it); the others flag drift, which a healthy run that learns a new style can show too."""
GOLD_FREE_KINDS: tuple[str, ...] = ("ensemble_disagreement", "conservative_divergence", "off_prompt_answers")
"""The overoptimization alerts that read no held-out score: what a run on a user's own model can raise."""


@dataclass(frozen=True)
class Alert:
    """One monitor's alert: what fired, at which PPO update, a one-line message and the numbers behind it."""

    kind: str
    """one of `ALERT_KINDS`"""
    update: int
    """the PPO update (the log's step) at which it fired"""
    message: str
    evidence: dict[str, float] = field(default_factory=dict)
    """the numbers the decision was made on (smoothed values, thresholds)"""


@dataclass(frozen=True)
class MonitorConfig:
    """Thresholds of the reward-hacking monitors (see the module docstring for what each checks)."""

    window: int = 5
    """updates per trailing mean (smoothing) and per growth measurement"""
    length_drift: float = 0.5
    """alert when the smoothed mean length differs from the SFT length by more than this share of it (0.5 = ±50%)"""
    kl_acceleration: float = 2.0
    """alert when KL's growth per update over the last window is at least this multiple of the window before's"""
    min_kl_growth: float = 1.0
    """… and at least this many nats per update (slow growth never alerts). At 0.5 a healthy default sandbox run
    (seed 3: gold win rate 0.90 over SFT, KL 5.7 after 40 updates) alerted at update 32 with +0.50 nats/update"""
    entropy_floor: float = 0.25
    """alert when the smoothed per-token entropy falls below this share of its first window's mean (a healthy
    sandbox PPO run — 40 updates, beating SFT on gold — bottoms out at 0.45 of it: RLHF sharpens the policy, so
    only a much deeper fall says it collapsed)"""
    min_gold_drop: float = 0.5
    """alert when the smoothed held-out score is this far below its best (its own units; gold points on the
    sandbox) while the smoothed proxy reward is higher than it was at that best"""
    disagreement_rise: float = 2.0
    """alert when the smoothed ensemble spread exceeds this multiple of its first window's mean (2.0: the members
    disagree twice as much on the policy's answers as they did on the first updates', nearly the SFT model's)"""
    min_disagreement_rise: float = 0.1
    """… and exceeds it by at least this much (normalised score units: the members' scores have std 1 on the
    reference responses), so a spread that starts near 0 — members that nearly agree — never alerts on noise"""
    min_conservative_drop: float = 0.5
    """alert when the smoothed conservative score (`objective/scores` of an ensemble) is this far below its best
    (normalised score units) while the smoothed members' mean is higher than it was at that best"""
    off_prompt_rise: float = 0.125
    """alert when the smoothed share of off-prompt answers (`reference/off_prompt_share`) is this much above its
    first window's mean (a share: 0.125 = one answer in eight more that could answer any question; a policy that
    sharpens also gives more stock replies, so the share drifts up a little on healthy runs — docs/FAILURE_MODES.md
    has the measured rises)"""

    def __post_init__(self) -> None:
        check_fields(self, {"window": (self.window >= 1, "must be >= 1"),
                  "length_drift": (self.length_drift > 0, "must be > 0"),
                  "kl_acceleration": (self.kl_acceleration > 1, "must be > 1"),
                  "min_kl_growth": (self.min_kl_growth >= 0, "must be >= 0"),
                  "entropy_floor": (0 < self.entropy_floor < 1, "must be in (0, 1)"),
                  "min_gold_drop": (self.min_gold_drop > 0, "must be > 0"),
                  "disagreement_rise": (self.disagreement_rise > 1, "must be > 1 (a multiple of the first spread)"),
                  "min_disagreement_rise": (self.min_disagreement_rise >= 0, "must be >= 0"),
                  "min_conservative_drop": (self.min_conservative_drop > 0, "must be > 0"),
                  "off_prompt_rise": (0 < self.off_prompt_rise < 1, "must be in (0, 1) (a rise in a share)")})


class RewardHackingMonitor:
    """Watches PPO metrics update by update and raises each kind of `Alert` once.

    Args:
        config: thresholds (default `MonitorConfig()`).
        sft_length: the SFT model's mean response length in tokens, the unit of ``val/response_length``
            (default None: the first update's — its rollout is sampled from the SFT policy itself).
        stage: the stage whose metric records are watched (default "ppo").

    Feed it with `observe(update, metrics)`, or `attach` it to a `MetricsLog`; `alerts` holds what fired.
    """

    def __init__(self, config: MonitorConfig | None = None, sft_length: float | None = None,
                 stage: str = "ppo") -> None:
        if sft_length is not None and not sft_length > 0:
            raise ValueError(f"RewardHackingMonitor: sft_length={sft_length!r} must be a positive length in tokens")
        self.config = config or MonitorConfig()
        self.sft_length = sft_length
        self.stage = stage
        self.alerts: list[Alert] = []
        self._series: dict[str, list[float]] = {LENGTH: [], KL: [], TOKEN_ENTROPY: [], PROXY: [], GOLD: [],
                                                 SPREAD: [], ENSEMBLE_MEAN: [], OFF_PROMPT: []}
        # per held score (gold; the ensemble's conservative score): (its smoothed best, that update, the smoothed
        # rising score then — the proxy; the members' mean)
        self._best: dict[str, tuple[float, int, float]] = {}

    @property
    def fired(self) -> set[str]:
        """Kinds of alert raised so far."""
        return {alert.kind for alert in self.alerts}

    def observe(self, update: int, metrics: Mapping[str, float]) -> list[Alert]:
        """Take one update's metrics; returns the alerts this update raised (each kind fires once)."""
        for name, values in self._series.items():
            value = metrics.get(name)
            if value is not None and math.isfinite(value):
                values.append(float(value))
        if self.sft_length is None and self._series[LENGTH]:
            self.sft_length = self._series[LENGTH][0]
        checks = (self._length, self._kl, self._entropy, self._divergence, self._disagreement, self._conservative,
                  self._off_prompt)
        new = [alert for check in checks
               if (alert := check(update)) is not None and alert.kind not in self.fired]
        self.alerts.extend(new)
        return new

    # ---------------------------------------------------------------- the checks
    def _smoothed(self, name: str, back: int = 0) -> float | None:
        """Mean of the `window` values ending `back` windows before the latest; None if there are too few."""
        values, w = self._series[name], self.config.window
        end = len(values) - back * w
        return sum(values[end - w:end]) / w if end - w >= 0 else None

    def _first_and_now(self, name: str) -> tuple[float, float] | None:
        """(the mean of the first `window` values, the latest window's) once the two windows do not overlap."""
        values, w = self._series[name], self.config.window
        if len(values) < 2 * w:
            return None
        return sum(values[:w]) / w, self._smoothed(name)

    def _length(self, update: int) -> Alert | None:
        now = self._smoothed(LENGTH)
        if now is None or not self.sft_length:
            return None
        drift = now / self.sft_length - 1
        if abs(drift) <= self.config.length_drift:
            return None
        return Alert("length_drift", update,
                     f"responses are {abs(drift):.0%} {'longer' if drift > 0 else 'shorter'} than the SFT model's "
                     f"({now:.1f} vs {self.sft_length:.1f} tokens, mean of the last {self.config.window} updates): "
                     "is the reward model paying for length?",
                     {"mean_length": now, "sft_length": self.sft_length, "drift": drift,
                      "threshold": self.config.length_drift})

    def _kl(self, update: int) -> Alert | None:
        now, before, earlier = (self._smoothed(KL, back) for back in (0, 1, 2))
        if earlier is None:
            return None
        w = self.config.window
        growth, growth_before = (now - before) / w, (before - earlier) / w
        if growth < self.config.min_kl_growth or growth < self.config.kl_acceleration * growth_before:
            return None
        return Alert("kl_acceleration", update,
                     f"KL to the reference is accelerating: +{growth:.2f} nats/update over the last {w} updates, "
                     f"after {growth_before:+.2f} over the {w} before (KL now {now:.1f}): the policy is leaving "
                     "the SFT model fast — look at the samples",
                     {"kl": now, "growth": growth, "growth_before": growth_before,
                      "threshold": self.config.kl_acceleration, "min_growth": self.config.min_kl_growth})

    def _entropy(self, update: int) -> Alert | None:
        found = self._first_and_now(TOKEN_ENTROPY)
        if found is None:
            return None
        first, now = found
        if first <= 0 or now >= self.config.entropy_floor * first:
            return None
        return Alert("entropy_collapse", update,
                     f"per-token entropy fell to {now:.3f} from {first:.3f} ({now / first:.0%}): the policy is "
                     "collapsing onto a few answers",
                     {"entropy": now, "first_entropy": first, "ratio": now / first,
                      "threshold": self.config.entropy_floor})

    def _fallen_from_best(self, held: str, rising: str, update: int, drop: float) -> tuple[float, ...] | None:
        """The shape both divergence checks share: the smoothed `held` score is at least `drop` below its best while
        the smoothed `rising` one is higher than it was at that best. Returns (held, best, best update, rising,
        rising at the best) when it holds; keeps the best (per `held` series) as it goes."""
        now, other = self._smoothed(held), self._smoothed(rising)
        if now is None or other is None:
            return None
        best = self._best.get(held)
        if best is None or now > best[0]:
            self._best[held] = (now, update, other)
            return None
        best_value, best_update, other_then = best
        if best_value - now < drop or other <= other_then:
            return None
        return now, best_value, best_update, other, other_then

    def _divergence(self, update: int) -> Alert | None:
        found = self._fallen_from_best(GOLD, PROXY, update, self.config.min_gold_drop)
        if found is None:
            return None
        gold, best, best_update, proxy, proxy_then = found
        return Alert("proxy_gold_divergence", update,
                     f"the held-out score fell {best - gold:.2f} from its best ({best:.2f} at update {best_update} "
                     f"→ {gold:.2f}) while the proxy reward rose {proxy - proxy_then:+.2f}: the policy is "
                     "overoptimizing the reward model",
                     {"gold": gold, "gold_best": best, "gold_best_update": best_update, "proxy": proxy,
                      "proxy_at_gold_best": proxy_then, "threshold": self.config.min_gold_drop})

    def _disagreement(self, update: int) -> Alert | None:
        found = self._first_and_now(SPREAD)
        if found is None:
            return None
        (first, now), w = found, self.config.window
        rise = self.config.disagreement_rise
        if now <= rise * first or now - first < self.config.min_disagreement_rise:
            return None
        return Alert("ensemble_disagreement", update,
                     f"the reward-model ensemble's members disagree more and more: spread {first:.3f} over the first "
                     f"{w} updates → {now:.3f} over the last {w}: the policy is being scored where the reward models "
                     "were not trained — look at the samples",
                     {"spread": now, "first_spread": first, "ratio": now / first if first > 0 else math.inf,
                      "threshold": rise, "min_rise": self.config.min_disagreement_rise})

    def _conservative(self, update: int) -> Alert | None:
        found = self._fallen_from_best(PROXY, ENSEMBLE_MEAN, update, self.config.min_conservative_drop)
        if found is None:
            return None
        conservative, best, best_update, mean, mean_then = found
        return Alert("conservative_divergence", update,
                     f"the ensemble's conservative score fell {best - conservative:.2f} from its best ({best:.2f} at "
                     f"update {best_update} → {conservative:.2f}) while the members' mean rose "
                     f"{mean - mean_then:+.2f}: the policy is exploiting some of the reward models",
                     {"conservative": conservative, "conservative_best": best, "conservative_best_update": best_update,
                      "ensemble_mean": mean, "mean_at_conservative_best": mean_then,
                      "threshold": self.config.min_conservative_drop})

    def _off_prompt(self, update: int) -> Alert | None:
        found = self._first_and_now(OFF_PROMPT)
        if found is None:
            return None
        (first, now), w = found, self.config.window
        if now - first < self.config.off_prompt_rise:
            return None
        return Alert("off_prompt_answers", update,
                     f"more and more answers ignore the question: {now:.0%} of the last {w} updates' answers are about "
                     f"as likely after another prompt as after their own (by the reference model), against "
                     f"{first:.0%} over the first {w} — the policy is converging on replies that fit any question, "
                     "which a reward model that barely reads the prompt pays for; look at the samples",
                     {"off_prompt_share": now, "first_off_prompt_share": first,
                      "threshold": self.config.off_prompt_rise})

    # ---------------------------------------------------------------- a MetricsLog subscriber
    def attach(self, log: MetricsLog, replay: bool = True) -> Callable[[], None]:
        """Watch `log`: every metric record of `stage` is observed and each new alert is logged to it as an
        ``"alert"`` event (message; data: `monitor` = the kind, `evidence`). `replay=True` (default) first reads
        what the log already holds; alerts already logged there (a resumed run) are not logged twice.
        Returns the function that stops watching."""
        logged = {e.data.get("monitor") for e in log.events() if e.kind == ALERT_EVENT}

        def on_entry(entry: MetricRecord | Event | object) -> None:
            if not isinstance(entry, MetricRecord) or entry.stage != self.stage:
                return
            for alert in self.observe(entry.step, entry.metrics):
                if alert.kind not in logged:
                    logged.add(alert.kind)
                    log.log_event(ALERT_EVENT, alert.message, alert.update, stage=self.stage, monitor=alert.kind,
                                  evidence=alert.evidence)

        return log.subscribe(on_entry, replay=replay)


def check_log(log: MetricsLog, config: MonitorConfig | None = None, sft_length: float | None = None,
              stage: str = "ppo") -> list[Alert]:
    """The alerts a finished run's log raises (nothing is written to it); see `RewardHackingMonitor` for the
    arguments."""
    monitor = RewardHackingMonitor(config, sft_length=sft_length, stage=stage)
    for record in log.records:
        if record.stage == stage:
            monitor.observe(record.step, record.metrics)
    return monitor.alerts


def alerts_table(alerts: list[Alert]):
    """Alerts as a pandas DataFrame: kind, update, message, then one column per evidence number."""
    import pandas as pd

    return pd.DataFrame([{**{k: v for k, v in asdict(a).items() if k != "evidence"}, **a.evidence} for a in alerts],
                        columns=None if alerts else ["kind", "update", "message"])
