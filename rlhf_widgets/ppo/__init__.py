"""PPO with a KL penalty: pure tensor functions (`core`), the trainer, and its notebook panel."""

from rlhf_widgets.ppo.config import PPOConfig
from rlhf_widgets.ppo.trainer import PPOTrainer, TrainingControl, TrainingStopped

__all__ = ["PPOConfig", "PPOTrainer", "TrainingControl", "TrainingStopped"]
