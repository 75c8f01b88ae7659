"""Reward model stage: train on preference pairs with TRL's RewardTrainer, then score responses.

`RewardModel` is the scoring API everything downstream uses (PPO, best-of-N, GRPO/RLOO, evaluation,
AI labeling): `score(prompts, responses)` formats each (prompt, response) as a chat conversation exactly
as TRL's RewardTrainer did during training, reads the score at the last real token (the EOS), in eval
mode, batched, optionally normalised so that a reference set of responses (e.g. SFT samples) scores
mean 0 / std 1. It is also a TRL reward function: `GRPOTrainer(reward_funcs=[reward_model], …)`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import trl
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from rlhf_widgets.callbacks import MetricsCallback
from rlhf_widgets.config import SANDBOX, ModelConfig, TrainingDefaults
from rlhf_widgets.data import as_messages, last_user_content, split_by_prompt
from rlhf_widgets.metrics import MetricsLog
from rlhf_widgets.models import choose_device, load_reward_backbone, load_tokenizer, lora_config

REWARD_META = "rlhf_widgets_reward.json"
"""File beside the saved weights with what is needed to reload: normalisation, base model, adapter flag."""


@dataclass
class RewardStageConfig(TrainingDefaults, trl.RewardConfig):
    """TRL's `RewardConfig` with workbench defaults, plus the held-out split."""

    output_dir: str | None = field(default="runs/reward", metadata={"help": "Where the reward model is saved."})
    learning_rate: float = field(default=3e-4, metadata={"help": "AdamW peak learning rate."})
    num_train_epochs: float = field(
        default=1.0,
        metadata={"help": "Passes over the training pairs. One, as InstructGPT: with several pairs per prompt each "
                  "answer recurs in several pairs, and further passes overfit (sandbox, 600 prompts × 6 pairs: "
                  "gold agreement 0.886 after 1 epoch, 0.886 after 2, at twice the time)."},
    )
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Preference pairs per step."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Pairs per evaluation batch."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up (a fraction < 1, or a step count)."})
    max_length: int | None = field(default=256, metadata={"help": "Longest prompt + response in tokens."})
    center_rewards_coefficient: float | None = field(
        default=0.01, metadata={"help": "Pulls mean reward to 0 (Eisenstein et al. 2023); None = off."}
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Share of pairs held out for the evaluation report (0 = none)."}
    )
    normalize_on: int = field(
        default=256,
        metadata={"help": "Fit score normalisation (mean 0 / std 1) on this many training responses — the "
                  "sampled responses being labeled, usually the SFT model's (0 = leave raw scores)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"RewardStageConfig.eval_fraction={self.eval_fraction}: must be in [0, 1)")
        if self.normalize_on < 0:
            raise ValueError(f"RewardStageConfig.normalize_on={self.normalize_on}: must be >= 0")


def _conversations(prompts: Sequence, responses: Sequence[str | list]) -> list[list[dict]]:
    if len(prompts) != len(responses):
        raise ValueError(f"score(): {len(prompts)} prompts but {len(responses)} responses")
    convs = []
    for prompt, response in zip(prompts, responses, strict=True):
        reply = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
        convs.append(as_messages(prompt) + reply)
    return convs


class RewardModel:
    """A trained reward model behind one call: `score(prompts, responses) -> (N,) tensor`.

    `bias` and `scale` normalise raw scores: `(raw - bias) / scale`; `fit_normalization` sets them.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        bias: float = 0.0,
        scale: float = 1.0,
        batch_size: int = 32,
        max_length: int = 512,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.bias = bias
        self.scale = scale
        self.batch_size = batch_size
        self.max_length = max_length
        self.__name__ = "reward_model"  # TRL names reward-function metrics after this

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, conversations: list[list[dict]]) -> dict[str, torch.Tensor]:
        # the same token sequence TRL's RewardTrainer built: the chat template over prompt + response
        ids = [
            self.tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"][: self.max_length]
            for c in conversations
        ]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):  # right padding: the sequence classifier pools the last non-pad token
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    @torch.no_grad()
    def raw_score(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        """Unnormalised scores, float32 on CPU, shape (N,)."""
        convs = _conversations(prompts, responses)
        out = []
        for start in range(0, len(convs), self.batch_size):
            logits = self.model(**self._encode(convs[start : start + self.batch_size])).logits
            out.append(logits[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, prompts: Sequence, responses: Sequence, normalize: bool = True) -> torch.Tensor:
        """Scores of `responses` to `prompts` (str or chat messages), shape (N,); normalised unless told not."""
        raw = self.raw_score(prompts, responses)
        return (raw - self.bias) / self.scale if normalize else raw

    def fit_normalization(self, prompts: Sequence, responses: Sequence) -> tuple[float, float]:
        """Set bias/scale so these responses (e.g. SFT samples) score mean 0 / std 1; returns them."""
        raw = self.raw_score(prompts, responses)
        self.bias, self.scale = raw.mean().item(), max(raw.std().item(), 1e-6)
        return self.bias, self.scale

    def prefer(self, prompt: str | list, a: str, b: str) -> str:
        """AI-labeler protocol: "a" or "b", whichever this model scores higher (ties go to "a")."""
        s = self.raw_score([prompt, prompt], [a, b])
        return "a" if s[0] >= s[1] else "b"

    def __call__(self, prompts: list, completions: list, **_: object) -> list[float]:
        """TRL reward-function protocol (GRPO/RLOO): one float per completion."""
        return self.score([last_user_content(p) if isinstance(p, list) else p for p in prompts], completions).tolist()

    def save(self, path: str | Path) -> Path:
        """Write the weights (PEFT adapter incl. score head, or full model), tokenizer and normalisation."""
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        is_adapter = isinstance(self.model, PeftModel)
        base = self.model.peft_config["default"].base_model_name_or_path if is_adapter else None
        meta = {
            "bias": self.bias,
            "scale": self.scale,
            "max_length": self.max_length,
            "adapter": is_adapter,
            "base_model": base,
            "load_in_4bit": bool(getattr(self.model, "is_loaded_in_4bit", False)),
        }
        (path / REWARD_META).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", batch_size: int = 32) -> RewardModel:
        """Reload what `save` wrote; scores equal the saved model's."""
        path = Path(path)
        meta_file = path / REWARD_META
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} is not a saved RewardModel (no {REWARD_META})")
        meta = json.loads(meta_file.read_text())
        tokenizer = load_tokenizer(path, padding_side="right")
        if meta["adapter"]:
            cfg = ModelConfig(model_name_or_path=meta["base_model"], use_peft=True,
                              load_in_4bit=meta["load_in_4bit"], device=device)
            base, _ = load_reward_backbone(cfg)
            model = PeftModel.from_pretrained(base, path)
            _adapters_to_compute_dtype(model)
        else:
            dev = choose_device(device)
            model = AutoModelForSequenceClassification.from_pretrained(path).to(dev)
        return cls(model, tokenizer, bias=meta["bias"], scale=meta["scale"], batch_size=batch_size,
                   max_length=meta["max_length"])


@dataclass
class RewardResult:
    """What a reward-model run produced."""

    reward_model: RewardModel
    """the trained model, ready to score"""
    model_path: Path
    """where it was saved (`RewardModel.load(model_path)`)"""
    eval_dataset: datasets.Dataset | None
    """held-out pairs (for `evaluate.reward_report`)"""
    metrics: MetricsLog
    """every logged metric of the run"""
    train_seconds: float
    """wall time of `trainer.train()`"""


def _adapters_to_compute_dtype(model: PreTrainedModel, only: str = "") -> None:
    """Cast the adapter / score-head parameters (names containing `only`) to the embeddings' dtype."""
    dtype = model.get_input_embeddings().weight.dtype
    for name, param in model.named_parameters():
        if (".lora_" in name or ".score." in f".{name}" or "modules_to_save" in name) and only in f".{name}":
            param.data = param.data.to(dtype)


def _fit_normalization_on(reward_model: RewardModel, pairs: datasets.Dataset, n: int) -> None:
    """Normalise on both responses of the first ⌈n/2⌉ training pairs (they are the sampler's outputs)."""
    rows = pairs.select(range(min(len(pairs), (n + 1) // 2)))
    prompts = [p for p in rows["prompt"] for _ in range(2)]
    responses = [r for c, j in zip(rows["chosen"], rows["rejected"], strict=True) for r in (c, j)]
    reward_model.fit_normalization(prompts, responses)


def train_reward_model(
    dataset: datasets.Dataset,
    config: RewardStageConfig | None = None,
    model: ModelConfig | str = SANDBOX,
    metrics: MetricsLog | None = None,
) -> RewardResult:
    """Train a reward model on preference pairs (`load_preferences` / `PreferenceStore.to_dataset` format).

    `model` is the backbone: usually the SFT model's directory; LoRA / 4-bit via `ModelConfig`. With
    LoRA the score head is trained in full (`modules_to_save=["score"]`).
    """
    config = config or RewardStageConfig()
    model_cfg = ModelConfig(model_name_or_path=model) if isinstance(model, str) else model
    # held out by prompt: with several pairs per prompt no held-out answer is also trained on
    split = split_by_prompt(dataset, config.eval_fraction, seed=config.seed) if config.eval_fraction else None
    train_ds, eval_ds = (split["train"], split["test"]) if split else (dataset, None)
    out = Path(config.output_dir)
    metrics = metrics if metrics is not None else MetricsLog(out / "metrics.jsonl", run_name="reward")
    torch.manual_seed(config.seed)  # the score head is initialised at random
    backbone, tokenizer = load_reward_backbone(model_cfg)
    peft_config = lora_config(model_cfg, task_type="SEQ_CLS")
    if peft_config is not None:
        peft_config.modules_to_save = ["score"]
    if eval_ds is not None and config.eval_strategy == "no":
        config.eval_strategy = "epoch"
    trainer = trl.RewardTrainer(
        model=backbone,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[MetricsCallback(metrics, stage="reward")],
    )
    if model_cfg.load_in_4bit:
        # TRL casts every trainable parameter of a quantized model to bf16 (QLoRA's recipe). LoRA layers cast
        # their input, but the fully trained score head would then see hidden states of the compute dtype
        # (fp32 on CPU) — keep the head in that dtype.
        _adapters_to_compute_dtype(trainer.model, only=".score.")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    if model_cfg.load_in_4bit:  # score with the adapter dtype `RewardModel.load` will use
        _adapters_to_compute_dtype(trainer.model)
    reward_model = RewardModel(trainer.model, tokenizer, max_length=config.max_length or 512)
    if config.normalize_on:
        _fit_normalization_on(reward_model, train_ds, config.normalize_on)
    final = reward_model.save(out / "final")
    metrics.log_event("saved", f"reward model saved to {final}", step=trainer.state.global_step)
    return RewardResult(reward_model, final, eval_ds, metrics, seconds)

