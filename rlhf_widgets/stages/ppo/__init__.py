"""PPO with a KL penalty: the recipe (`trainer`), its pieces (`rollout`, `core`, `backbone`, `fastpaths`,
`memory`, `distributed`, `zero`), what surrounds it (`recovery`, `checkpoints`, `stopping`, `reporting`, `flops`,
`timing`) and its knobs (`config`); its notebook panel is `views.training_panel.PPOPanel`."""

from rlhf_widgets.runtime.control import TrainingControl
from rlhf_widgets.stages.ppo.config import PPOConfig
from rlhf_widgets.stages.ppo.rollout import Rollout
from rlhf_widgets.stages.ppo.stopping import TrainingStopped
from rlhf_widgets.stages.ppo.trainer import PPOTrainer, train_ppo

__all__ = ["PPOConfig", "PPOTrainer", "Rollout", "TrainingControl", "TrainingStopped", "train_ppo"]

