"""`accelerate` config files for multi-process training: DeepSpeed ZeRO-2 (`zero2.yaml`) and FSDP 2 (`fsdp.yaml`).

`python -m rlhf_widgets.accelerate_configs NAME` prints a file's path, for `accelerate launch --config_file`.
See docs/SCALE.md for which stage runs under which engine.
"""

from __future__ import annotations

from pathlib import Path

CONFIGS = ("zero2", "fsdp")


def config_path(name: str) -> Path:
    """The path of the shipped config `name` ("zero2" or "fsdp")."""
    if name not in CONFIGS:
        raise ValueError(f"no accelerate config {name!r}; the package ships {list(CONFIGS)}")
    return Path(__file__).with_name(f"{name}.yaml")
