"""PPO with a KL penalty: pure tensor functions (`core`), the trainer, and its notebook panel."""

from typing import Any

from rlhf_widgets.ppo.config import PPOConfig
from rlhf_widgets.ppo.trainer import PPOTrainer, TrainingControl, TrainingStopped

__all__ = ["PPOConfig", "PPOPanel", "PPOTrainer", "TrainingControl", "TrainingStopped"]


def __getattr__(name: str) -> Any:
    """Import `PPOPanel` on first use: scripts and `accelerate launch` runs never load ipywidgets."""
    if name == "PPOPanel":
        from rlhf_widgets.ppo.panel import PPOPanel

        return PPOPanel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
