"""rlhf-widgets: a Jupyter-native RLHF workbench.

SFT → preference labeling inside the notebook → reward model → PPO (or DPO / GRPO / RLOO /
best-of-N) → evaluation, with live plots, on an offline sandbox world by default.
"""

__version__ = "0.1.0"
