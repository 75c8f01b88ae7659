"""Configuration shared by every stage.

Stage configs subclass TRL's own configs (see `sft.py`, `reward.py`, …) and add only their fields;
this module holds what every stage shares: which model to load and how (LoRA, 4-bit, device).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field

import trl

from rlhf_widgets.runtime.types import SANDBOX
from rlhf_widgets.runtime.validation import check_fields

"""Model name that selects the offline sandbox's tiny pretrained base model."""

_DEVICES = ("auto", "cpu", "cuda", "mps")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


def field_help(text: str) -> dict[str, str]:
    """A dataclass field's `metadata`: the help text `HfArgumentParser` shows for it on the command line."""
    return {"help": text}


@dataclass
class ModelConfig(trl.ModelConfig):
    """TRL's `ModelConfig` with workbench defaults: the sandbox model, LoRA dropout off, a device choice.

    `use_peft=True` trains a LoRA adapter; add `load_in_4bit=True` for QLoRA (nf4, double quant).
    Every other field is TRL's (`lora_r`, `lora_alpha`, `lora_target_modules`, `bnb_4bit_quant_type`, …).
    """

    model_name_or_path: str | None = field(
        default=SANDBOX,
        metadata={"help": "Hub id, local directory, or 'sandbox' for the offline tiny base model."},
    )
    dtype: str | None = field(
        default="auto",
        metadata={"help": "'auto' picks bfloat16 on GPUs that support it, float16 on other GPUs, float32 on CPU."},
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "LoRA dropout; 0 because RL needs identical forwards for old and new log-probs."},
    )
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"],  # a one-name list becomes the string (TRL's __post_init__)
        metadata={"help": "Module names that get LoRA adapters, or 'all-linear' (every linear layer but the head)."},
    )
    use_bnb_nested_quant: bool = field(
        default=True,
        metadata={"help": "Double quantization of the 4-bit quantization constants (QLoRA default)."},
    )
    device: str = field(
        default="auto",
        metadata={"help": "'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'mps'."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model_name_or_path:
            raise ValueError("ModelConfig.model_name_or_path is empty: give a hub id, a local path or 'sandbox'")
        check_fields(self, {
            "device": (self.device in _DEVICES, f"expected one of {_DEVICES}"),
            "dtype": (self.dtype in _DTYPES, f"expected one of {_DTYPES}"),
            "lora_r": (self.lora_r > 0, "must be a positive integer"),
        })
        if self.load_in_4bit and not self.use_peft:
            raise ValueError("ModelConfig.load_in_4bit=True needs use_peft=True: 4-bit weights train only through LoRA")

    def to_dict(self) -> dict:
        """Plain dict for logs and checkpoints."""
        return asdict(self)


def as_model_config(model: str | os.PathLike | ModelConfig, **changes: object) -> ModelConfig:
    """The one conversion of a stage's `model=` argument into a `ModelConfig`: a hub id, a local path or
    'sandbox' becomes `ModelConfig(model_name_or_path=...)`; a `ModelConfig` is copied. `changes` override
    fields of the copy. The caller's object is never modified."""
    if isinstance(model, ModelConfig):
        return dataclasses.replace(model, **changes)
    if isinstance(model, (str, os.PathLike)):
        return ModelConfig(model_name_or_path=str(model), **changes)
    raise TypeError(f"model must be a hub id, a local path, 'sandbox' or a ModelConfig, got {type(model).__name__}")


@dataclass
class TrainingDefaults:
    """Defaults every stage's TRL config shares; mix in before the TRL config class.

    `class SFTStageConfig(TrainingDefaults, trl.SFTConfig)` gets: no remote logging, no activation
    checkpointing (the models here are small; TRL turns it on by default), and on a machine without
    CUDA `use_cpu=True` — except under an `accelerate launch` with the
    DeepSpeed config (`rlhf_widgets/accelerate_configs/zero2.yaml`), where `use_cpu=True` would replace the engine
    with plain CPU data parallel: there the processes keep `use_cpu=False` and talk over gloo (`ddp_backend`).
    FSDP without CUDA is refused (accelerate runs FSDP only across accelerators).

    `bf16=None` (the default) trains under bf16 autocast where the hardware computes bf16 natively: a CUDA GPU with
    bf16, or a CPU with AVX512-BF16 / AMX (`rlhf_widgets.runtime.precision.cpu_has_native_bf16`; not under DeepSpeed,
    whose config decides) — the weights, the optimizer state and the loss stay float32, the reward model's score
    head computes in float32. `bf16=False` (or `RLHF_WIDGETS_CPU_BF16=0` for the whole workbench) trains in float32.
    """

    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Remote loggers (wandb, …); the MetricsLog always records."}
    )
    activation_checkpointing: bool | None = field(
        default=False, metadata={"help": "Recompute activations in backward to save memory (slower)."}
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing in transformers 5."}
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision (autocast, float32 weights); None = on where the "
                                          "hardware computes bf16 natively (GPUs with bf16, CPUs with AVX512-BF16 / "
                                          "AMX), else float32."}
    )
    logging_steps: float = field(default=5, metadata={"help": "Optimizer steps between two metric logs."})
    save_strategy: str = field(default="no", metadata={"help": "Trainer checkpoints; the stage saves its result."})
    seed: int = field(default=0, metadata={"help": "Random seed for initialisation, data order and sampling."})

    def __post_init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
                raise ValueError("FSDP through accelerate needs GPUs: accelerate runs FSDP only across accelerators, "
                                 "and on CPU each process would train alone. Launch with DeepSpeed ZeRO-2 "
                                 "(rlhf_widgets/accelerate_configs/zero2.yaml) or plain data parallel (--multi_gpu)")
            deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
            if deepspeed:
                self.ddp_backend = self.ddp_backend or "gloo"
            else:
                self.use_cpu = True
            if self.bf16 is None:
                from rlhf_widgets.runtime.precision import cpu_has_native_bf16

                self.bf16 = not deepspeed and cpu_has_native_bf16()
        elif self.bf16 is None:
            self.bf16 = torch.cuda.is_bf16_supported()
        super().__post_init__()
