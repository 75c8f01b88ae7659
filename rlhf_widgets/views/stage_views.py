"""What a run's figure shows for each stage: `Panel` (one subplot: its metrics, axes, colours and legend names)
and each stage's designed view (`STAGE_VIEWS`).

A run is drawn in a **designed view** when its stage is known (SFT, reward model, DPO, GRPO / RLOO, PPO, the
iterative loop): panels that answer the stage's questions — for PPO, is the reward going up and at what KL, is the
policy update healthy, is the value function learning. Each panel keeps metrics of one scale on one axis: a metric
of another unit or scale goes on the panel's right-hand axis (the gold score beside the reward model's, β beside
the KL), never on the same linear axis. Declarations only: `views.traces` picks a view and reads its traces.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rlhf_widgets.views.style import CHOSEN, ENSEMBLE_MEAN, GOLD, PROXY, REJECTED, SPREAD


@dataclass(frozen=True)
class Panel:
    """One subplot of a designed view.

    `left` / `right`: metric names (or `fnmatch` patterns such as `rewards/*/mean`) on the left and on the
    right-hand y axis; `left_title` / `right_title` name their units. `x`: a metric drawn on the x axis instead
    of the step (an x–y panel: each point is one logged record holding both). `colors`: fixed colours per metric
    (default: `PALETTE` in order on the left, green on the right). `labels`: short legend names per metric, or
    per pattern with one `*`, whose `*` in the label stands for what it matched (`("reward/member_*", "member *")`
    names `reward/member_0` "member 0"); default the metric name; the hover text always names the metric.
    `left_range` / `right_range`: fixed axis ranges (a share from 0 to 1), default autoscaled.
    """

    title: str
    left: tuple[str, ...]
    right: tuple[str, ...] = ()
    left_title: str = ""
    right_title: str = ""
    x: str | None = None
    x_title: str = "step"
    colors: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    left_range: tuple[float, float] | None = None
    right_range: tuple[float, float] | None = None


def _against(title: str, view: tuple[Panel, ...]) -> tuple[Panel, ...]:
    """`view` with every panel drawn against the step titled `title` ("update", "round")."""
    return tuple(replace(p, x_title=title) if p.x is None else p for p in view)


PPO_VIEW = _against("update", (
    Panel("Reward", ("objective/scores", "objective/rlhf_reward"), ("gold/score",), "reward model",
          "gold (never trained on)", colors=(("objective/scores", PROXY), ("gold/score", GOLD)),
          labels=(("objective/scores", "RM score"), ("objective/rlhf_reward", "RM score − β·KL"),
                  ("gold/score", "gold"))),
    Panel("KL to the reference", ("objective/kl",), ("objective/kl_coef",), "nats / response", "β",
          labels=(("objective/kl", "KL"), ("objective/kl_coef", "β"))),
    Panel("Reward vs KL", ("objective/scores",), ("gold/score",), "reward model", "gold", x="objective/kl",
          x_title="KL (nats / response)", colors=(("objective/scores", PROXY), ("gold/score", GOLD)),
          labels=(("objective/scores", "RM score"), ("gold/score", "gold"))),
    Panel("Reward-model ensemble", ("reward/member_*", "reward/ensemble_mean"), ("reward/ensemble_spread",),
          "reward model", "spread (std across members)",
          colors=(("reward/ensemble_mean", ENSEMBLE_MEAN), ("reward/ensemble_spread", SPREAD)),
          labels=(("reward/member_*", "member *"), ("reward/ensemble_mean", "ensemble mean"),
                  ("reward/ensemble_spread", "spread"))),
    Panel("Response length", ("val/response_length",), (), "tokens"),
    Panel("Entropy", ("policy/entropy_avg",), (), "nats / token"),
    Panel("Policy update: clipping", ("policy/clipfrac_avg",), ("policy/approxkl_avg",), "clip fraction",
          "approx. KL", labels=(("policy/clipfrac_avg", "clip fraction"), ("policy/approxkl_avg", "approx. KL"))),
    Panel("Policy ratio", ("val/ratio",), (), "new / old probability"),
    Panel("Policy loss", ("loss/policy_avg",), ()),
    Panel("Value function", ("loss/value_avg",), ("val/var_explained",), "value loss", "explained variance",
          labels=(("loss/value_avg", "value loss"), ("val/var_explained", "explained variance"))),
))
SFT_VIEW = (
    Panel("Loss", ("loss",), (), "cross-entropy"),
    Panel("Token accuracy", ("mean_token_accuracy",), (), "share of tokens"),
    Panel("Entropy", ("entropy",), (), "nats / token"),
    Panel("Learning rate", ("learning_rate",)),
    Panel("Gradient norm", ("grad_norm",)),
)
REWARD_VIEW = (
    Panel("Loss", ("loss",), (), "Bradley–Terry loss"),
    Panel("Accuracy", ("accuracy",), (), "share of pairs"),
    Panel("Margin", ("margin",), (), "r(chosen) − r(rejected)"),
    Panel("Rewards", ("mean_reward", "min_reward", "max_reward"), (), "reward",
          labels=(("mean_reward", "mean"), ("min_reward", "min"), ("max_reward", "max"))),
    Panel("Learning rate", ("learning_rate",)),
    Panel("Gradient norm", ("grad_norm",)),
)
DPO_VIEW = (
    Panel("Loss", ("loss",), (), "DPO loss"),
    Panel("Preference accuracy", ("rewards/accuracies",), (), "share of pairs"),
    Panel("Reward margin", ("rewards/margins",), (), "β·log-ratio"),
    Panel("Implicit rewards", ("rewards/chosen", "rewards/rejected"), (), "β·log-ratio",
          colors=(("rewards/chosen", CHOSEN), ("rewards/rejected", REJECTED)),
          labels=(("rewards/chosen", "chosen"), ("rewards/rejected", "rejected"))),
    Panel("Log-probabilities", ("logps/chosen",), ("logps/rejected",), "chosen (nats)", "rejected (nats)",
          colors=(("logps/chosen", CHOSEN), ("logps/rejected", REJECTED)),
          labels=(("logps/chosen", "chosen"), ("logps/rejected", "rejected"))),
    Panel("Learning rate", ("learning_rate",)),
)
ONLINE_VIEW = (
    Panel("Reward", ("reward", "rewards/*/mean"), (), "reward"),
    Panel("KL to the reference", ("kl",), (), "nats / token"),
    Panel("Completion length", ("completions/mean_length",), (), "tokens"),
    Panel("Reward spread in a group", ("reward_std",), ("frac_reward_zero_std",), "std", "groups with std 0",
          labels=(("reward_std", "std"), ("frac_reward_zero_std", "share with std 0")), right_range=(0, 1)),
    Panel("Entropy", ("entropy",), (), "nats / token"),
    Panel("Loss", ("loss",)),
    Panel("Clipped completions", ("completions/clipped_ratio",), (), "share", left_range=(0, 1)),
    Panel("Learning rate", ("learning_rate",)),
)
LOOP_VIEW = _against("round", (  # the iterative loop: one point per round (step = round)
    Panel("Win rate vs SFT", ("loop/gold_win_rate_vs_sft", "loop/rm_win_rate_vs_sft"), (), "share of prompts",
          colors=(("loop/gold_win_rate_vs_sft", GOLD), ("loop/rm_win_rate_vs_sft", PROXY)),
          labels=(("loop/gold_win_rate_vs_sft", "gold"), ("loop/rm_win_rate_vs_sft", "reward model")),
          left_range=(0, 1)),
    Panel("Win rate vs previous round", ("loop/win_rate_vs_previous",), (), "share of prompts",
          left_range=(0, 1)),
    Panel("Reward model on new answers", ("loop/rm_gold_agreement_before", "loop/rm_gold_agreement_after",
                                          "loop/rm_accuracy_before", "loop/rm_accuracy_after"),
          (), "agrees with gold / labels", left_range=(0, 1),  # before and after retraining on the round's labels
          labels=(("loop/rm_gold_agreement_before", "gold, before"), ("loop/rm_gold_agreement_after", "gold, after"),
                  ("loop/rm_accuracy_before", "labels, before"), ("loop/rm_accuracy_after", "labels, after"))),
    Panel("KL to SFT", ("loop/kl_to_sft",), (), "nats / response"),
    Panel("Answer length", ("loop/words",), (), "words"),
    Panel("Labels", ("loop/ai_labels",), ("loop/human_labels",), "pairs labeled by the AI labeler",
          "pairs labeled by people", labels=(("loop/ai_labels", "AI labeler"), ("loop/human_labels", "people"))),
))
STAGE_VIEWS: dict[str, tuple[Panel, ...]] = {
    "ppo": PPO_VIEW, "sft": SFT_VIEW, "reward": REWARD_VIEW, "dpo": DPO_VIEW, "grpo": ONLINE_VIEW,
    "rloo": ONLINE_VIEW, "loop": LOOP_VIEW,
}
"""The designed view of each stage (keys are the stage names trainers log under)."""
STEP_NAMES = {"ppo": "update", "loop": "round"}
"""What a step is, per stage (others: "step")."""
