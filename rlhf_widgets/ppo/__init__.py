"""PPO with a KL penalty: the recipe (`trainer`), its pieces (`rollout`, `core`, `backbone`, `fastpaths`,
`control`, `memory`), its knobs (`config`) and its notebook panel (`panel`)."""

from typing import Any

from rlhf_widgets.ppo.config import PPOConfig
from rlhf_widgets.ppo.control import TrainingControl
from rlhf_widgets.ppo.rollout import Rollout, TrainingStopped
from rlhf_widgets.ppo.trainer import PPOTrainer, train_ppo

__all__ = ["PPOConfig", "PPOPanel", "PPOTrainer", "Rollout", "TrainingControl", "TrainingStopped", "train_ppo"]


def __getattr__(name: str) -> Any:
    """Import `PPOPanel` on first use: scripts and `accelerate launch` runs never load ipywidgets."""
    if name == "PPOPanel":
        from rlhf_widgets.ppo.panel import PPOPanel

        return PPOPanel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
