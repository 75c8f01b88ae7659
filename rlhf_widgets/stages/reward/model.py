"""Reward model stage: train on preference pairs with TRL's RewardTrainer, then score responses.

`RewardModel` is a reward function in the project's protocol (`runtime.reward_protocol`): calling it — or its
`score` — on (prompts, responses) formats each pair as a chat conversation with the same function that made the
training sequences (`reward_token_ids`), reads the score at the last real token (the turn end), in eval mode,
batched, normalised so that a reference set of responses (e.g. SFT samples) scores mean 0 / std 1. PPO,
GRPO/RLOO, best-of-N, AI labelers and evaluation all take it.

A conversation longer than `max_length` tokens keeps its end — the response, where the score is read — and
loses the start of its prompt (after a leading BOS / [CLS]); training and scoring trim the same way, and both
count and say how many were trimmed. Any sequence classifier works as the backbone: the SFT model (a decoder
with a score head) or an encoder (BERT / DeBERTa / MiniLM-style, with the plain encoder chat format of
`rlhf_widgets.runtime.chat`), with its own tokenizer.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import torch
import trl
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from rlhf_widgets.runtime.chat import render
from rlhf_widgets.runtime.config import SANDBOX, ModelConfig, TrainingDefaults, as_model_config
from rlhf_widgets.runtime.data import as_messages, message_text, split_by_prompt
from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.models import choose_device, load_reward_backbone, load_tokenizer
from rlhf_widgets.runtime.precision import Float32Linear, check_inference_precision, inference_autocast
from rlhf_widgets.runtime.stage_runner import FINAL, StageResult, copied, run_trl_trainer, stage_metrics
from rlhf_widgets.runtime.validation import check_fields

if TYPE_CHECKING:
    from rlhf_widgets.stages.reward.ensemble import RewardEnsemble

REWARD_META = "rlhf_widgets_reward.json"
"""File beside the saved weights with what is needed to reload: normalisation, base model, adapter flag."""


@dataclass
class RewardStageConfig(TrainingDefaults, trl.RewardConfig):
    """TRL's `RewardConfig` with workbench defaults, plus the held-out split."""

    output_dir: str | None = field(default="runs/reward", metadata={"help": "Where the reward model is saved."})
    learning_rate: float = field(default=3e-4, metadata={"help": "AdamW peak learning rate."})
    num_train_epochs: float = field(
        default=1.0,
        metadata={"help": "Passes over the training pairs (one, as InstructGPT: with several pairs per prompt each "
                  "answer recurs in several pairs)."},
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
    mismatched_pairs: float = field(
        default=0.0,
        metadata={"help": "Also train on this many mismatched pairs per labeled pair (0.5 = half as many again): "
                  "a training pair's chosen answer preferred over the chosen answer to another prompt. No labels "
                  "needed — an answer written for another question is worse — and it teaches the reward model that "
                  "an answer must fit what was asked, where PPO otherwise finds answers that score high whatever "
                  "the question (0 = off)."},
    )
    normalize_on: int = field(
        default=256,
        metadata={"help": "Fit score normalisation (mean 0 / std 1) on this many training responses — the "
                  "sampled responses being labeled, usually the SFT model's (0 = leave raw scores)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, {
            "eval_fraction": (0 <= self.eval_fraction < 1, "must be in [0, 1)"),
            "mismatched_pairs": (0 <= self.mismatched_pairs <= 4,
                                 "must be in [0, 4] (mismatched pairs per labeled pair)"),
            "normalize_on": (self.normalize_on >= 0, "must be >= 0"),
        })


class TrimmedWarning(UserWarning):
    """Some (prompt, response) conversations were longer than the reward model's max_length."""


def reward_token_ids(tokenizer: PreTrainedTokenizerBase, conversation: list[dict], max_length: int | None
                     ) -> tuple[list[int], bool]:
    """The token ids a reward model reads for one conversation (the chat format over prompt + response) and
    whether they were trimmed: beyond `max_length` the start of the prompt goes (after a leading BOS / [CLS]),
    never the response's end, where the score is read."""
    ids = render(tokenizer, conversation, tokenize=True, return_dict=True)["input_ids"]
    if not max_length or len(ids) <= max_length:
        return ids, False
    lead = 1 if ids[0] in (tokenizer.bos_token_id, getattr(tokenizer, "cls_token_id", None)) else 0
    return ids[:lead] + ids[len(ids) - (max_length - lead):], True


def _say_trimmed(trimmed: int, total: int, max_length: int, what: str) -> None:
    if trimmed:
        warnings.warn(f"{trimmed} of {total} {what} were longer than max_length={max_length} tokens: their prompts "
                      "were trimmed from the left, keeping the response's end (raise max_length to keep more)",
                      TrimmedWarning, stacklevel=3)


def _conversations(prompts: Sequence, responses: Sequence[str | list]) -> list[list[dict]]:
    if len(prompts) != len(responses):
        raise ValueError(f"score(): {len(prompts)} prompts but {len(responses)} responses")
    convs = []
    for prompt, response in zip(prompts, responses, strict=True):
        reply = [{"role": "assistant", "content": message_text(response)}]
        convs.append(as_messages(prompt) + reply)
    return convs


class RewardModel:
    """A trained reward model behind one call: `score(prompts, responses) -> (N,) tensor`.

    `bias` and `scale` normalise raw scores: `(raw - bias) / scale`; `fit_normalization` sets them.
    `mixed_precision` is the compute dtype of scoring a float32 model ("auto", the default: bf16 autocast where the
    hardware computes bf16 natively, else float32; "no": float32; "bf16"; `ppo.precision.inference_autocast`); the
    score head computes in float32 either way (`_score_head_in_float32`), so only the body's rounding reaches the
    scores.
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
        mixed_precision: str = "auto",
    ) -> None:
        check_inference_precision("RewardModel mixed_precision", mixed_precision)
        self.model = model.eval()
        self.mixed_precision = mixed_precision
        _score_head_in_float32(model)
        self.tokenizer = tokenizer
        self.bias = bias
        self.scale = scale
        self.batch_size = batch_size
        self.max_length = max_length
        self.trimmed = 0
        """conversations scored so far whose prompt was trimmed to fit `max_length`"""
        self.tokens_scored = 0
        """token positions run through the model so far, padding included (PPO counts its FLOPs from them)"""
        self.__name__ = "reward_model"  # TRL names reward-function metrics after this

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, conversations: list[list[dict]]) -> tuple[dict[str, torch.Tensor], int]:
        """Right-padded model inputs (the same token sequences training used) and how many were trimmed."""
        encoded = [reward_token_ids(self.tokenizer, c, self.max_length) for c in conversations]
        ids = [row for row, _ in encoded]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):  # right padding: the sequence classifier pools the last non-pad token
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        return inputs, sum(trimmed for _, trimmed in encoded)

    @torch.no_grad()
    def raw_score(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        """Unnormalised scores, float32 on CPU, shape (N,). Conversations longer than `max_length` lose the start
        of their prompt (counted in `trimmed`, and said)."""
        convs = _conversations(prompts, responses)
        out, trimmed = [], 0
        for start in range(0, len(convs), self.batch_size):
            inputs, n_trimmed = self._encode(convs[start : start + self.batch_size])
            with inference_autocast(self.model, self.mixed_precision):
                out.append(self.model(**inputs).logits[:, 0].float().cpu())
            self.tokens_scored += inputs["input_ids"].numel()
            trimmed += n_trimmed
        self.trimmed += trimmed
        _say_trimmed(trimmed, len(convs), self.max_length, "conversations scored")
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

    def __call__(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        """The reward protocol (`rlhf_widgets.runtime.reward_protocol`): normalised scores, shape (N,)."""
        return self.score(prompts, responses)

    def save(self, path: str | Path) -> Path:
        """Write the weights (PEFT adapter incl. score head, or full model), tokenizer and normalisation."""
        path = Path(path)
        base = self._save_weights(path)
        self.tokenizer.save_pretrained(path)
        meta = {
            "bias": self.bias,
            "scale": self.scale,
            "max_length": self.max_length,
            "adapter": base is not None,
            "base_model": base,
            "load_in_4bit": bool(getattr(self.model, "is_loaded_in_4bit", False)),
        }
        (path / REWARD_META).write_text(json.dumps(meta, indent=2))
        return path

    def _save_weights(self, path: Path) -> str | None:
        """Write the weights (the adapter with its score head, or the full model); the adapter's base model, or None
        for a full model."""
        self.model.save_pretrained(path)
        return self.model.peft_config["default"].base_model_name_or_path if isinstance(self.model, PeftModel) else None

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", batch_size: int = 32, mixed_precision: str = "auto"
             ) -> RewardModel:
        """Reload what `save` wrote; scores equal the saved model's."""
        path = Path(path)
        meta = saved_reward_meta(path)
        tokenizer = load_tokenizer(path, padding_side="right")
        if meta["adapter"]:
            model = PeftModel.from_pretrained(adapter_base(meta, device), path)
            _adapters_to_compute_dtype(model)
        else:
            dev = choose_device(device)
            model = AutoModelForSequenceClassification.from_pretrained(path).to(dev)
        return cls(model, tokenizer, bias=meta["bias"], scale=meta["scale"], batch_size=batch_size,
                   max_length=meta["max_length"], mixed_precision=mixed_precision)


def adapter_base(meta: dict, device: str = "auto") -> PreTrainedModel:
    """The base model a saved LoRA reward model's adapter goes on (`meta`: `saved_reward_meta`): its checkpoint,
    loaded as a reward backbone with its 4-bit setting."""
    base, _ = load_reward_backbone(ModelConfig(model_name_or_path=meta["base_model"], use_peft=True,
                                               load_in_4bit=meta["load_in_4bit"], device=device))
    return base


def saved_reward_meta(path: Path) -> dict:
    """What `RewardModel.save` wrote beside the weights in `path` (normalisation, adapter or not, base model)."""
    meta_file = path / REWARD_META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved RewardModel (no {REWARD_META})")
    return json.loads(meta_file.read_text())


@dataclass
class RewardModelResult(StageResult):
    """A reward-model stage's result: the `StageResult` fields, plus the model ready to score and the held-out
    pairs (for `evaluation.reward_report`)."""

    reward_model: RewardModel | None = None
    """the trained model, ready to score (the same one `RewardModel.load(model_path)` gives)"""
    eval_dataset: datasets.Dataset | None = None
    """the held-out pairs (by prompt), None when `eval_fraction=0`"""


HEADS = ("score", "classifier")
"""Names of a sequence classifier's output head: decoders' `score`, encoders' (BERT, DeBERTa) `classifier`."""


def score_head(model: torch.nn.Module) -> str:
    """The name of the model's scoring head (fully trained, beside the LoRA adapters)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    head = next((name for name in HEADS if isinstance(getattr(base, name, None), torch.nn.Module)), None)
    if head is None:
        raise ValueError(f"{type(base).__name__} has none of the scoring heads {HEADS}: load the reward backbone with "
                         "AutoModelForSequenceClassification (rlhf_widgets.runtime.models.load_reward_backbone)")
    return head


def _adapters_to_compute_dtype(model: PreTrainedModel, only: str = "") -> None:
    """Cast the adapter / scoring-head parameters (names containing `only`) to the embeddings' dtype."""
    dtype = model.get_input_embeddings().weight.dtype
    head = f".{score_head(model)}."
    for name, param in model.named_parameters():
        if (".lora_" in name or head in f".{name}" or "modules_to_save" in name) and only in f".{name}":
            param.data = param.data.to(dtype)


def _score_head_in_float32(model: PreTrainedModel) -> None:
    """Make the scoring head compute in float32 under bf16/fp16 autocast (the body stays half precision).

    The Bradley–Terry loss reads the *difference* of two scores; a half-precision head rounds each score to 8
    (bf16) or 11 (fp16) mantissa bits, which for two close answers is most of their margin — the same reason PPO's
    value head stays float32. Every `nn.Linear` of the head becomes a `Float32Linear` (the same parameters and
    state-dict keys: it saves and loads as `nn.Linear`), also inside PEFT's `modules_to_save` wrapper and a
    two-layer classifier head (RoBERTa's).
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    for module in getattr(base, score_head(model)).modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = Float32Linear


def _tokenized_pairs(pairs: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int | None
                     ) -> tuple[datasets.Dataset, int]:
    """`chosen_ids` / `rejected_ids` of every pair, made by `reward_token_ids` — the function scoring uses, so
    training and scoring read the same tokens and long pairs are trimmed the same way, not dropped — and how many
    pairs were trimmed."""
    chosen, rejected, trimmed = [], [], 0
    for prompt, good, bad in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"], strict=True):
        (c, cut_c), (r, cut_r) = (reward_token_ids(tokenizer, conv, max_length)
                                  for conv in _conversations([prompt, prompt], [good, bad]))
        chosen.append(c)
        rejected.append(r)
        trimmed += cut_c or cut_r
    return datasets.Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected}), trimmed


def with_mismatched_pairs(pairs: datasets.Dataset, share: float, seed: int) -> datasets.Dataset:
    """`pairs` and, after them, ``round(share · len(pairs))`` mismatched pairs (`RewardStageConfig.mismatched_pairs`):
    for a pair drawn at random (without replacement while there are enough), its prompt, its chosen answer as
    chosen, and as rejected the chosen answer of a pair with another prompt. Unchanged with share 0 or a single
    distinct prompt (nothing to mismatch)."""
    n = round(share * len(pairs))
    keys = [p if isinstance(p, str) else json.dumps(p, sort_keys=True) for p in pairs["prompt"]]
    if n == 0 or len(set(keys)) < 2:
        return pairs
    rng = random.Random(seed)
    rows = [i for _ in range(-(-n // len(pairs))) for i in rng.sample(range(len(pairs)), len(pairs))][:n]
    prompts, chosen, rejected = [], [], []
    for i in rows:
        j = rng.randrange(len(pairs))
        while keys[j] == keys[i]:
            j = rng.randrange(len(pairs))
        prompts.append(pairs[i]["prompt"])
        chosen.append(pairs[i]["chosen"])
        rejected.append(pairs[j]["chosen"])
    extra = datasets.Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    return datasets.concatenate_datasets([pairs.select_columns(["prompt", "chosen", "rejected"]), extra])


def fit_normalization_on_pairs(reward_model: RewardModel | RewardEnsemble, pairs: datasets.Dataset, n: int) -> None:
    """Normalise on both responses of the first ⌈n/2⌉ training pairs (they are the sampler's outputs)."""
    rows = pairs.select(range(min(len(pairs), (n + 1) // 2)))
    prompts = [p for p in rows["prompt"] for _ in range(2)]
    responses = [r for c, j in zip(rows["chosen"], rows["rejected"], strict=True) for r in (c, j)]
    reward_model.fit_normalization(prompts, responses)


def train_reward_model(
    data: datasets.Dataset,
    config: RewardStageConfig | None = None,
    *,
    model: ModelConfig | str | os.PathLike = SANDBOX,
    metrics: MetricsLog | None = None,
) -> RewardModelResult:
    """Train a reward model on preference pairs `data` (`load_preferences` / `PreferenceStore.to_dataset` format)
    and save it under `<output_dir>/final` (`RewardModel.load` reads it back).

    `model` is the backbone: usually the SFT model's directory, or any sequence-classifier checkpoint — an
    encoder too, with its own tokenizer; LoRA / 4-bit via `ModelConfig`. With LoRA the scoring head is trained in
    full (`modules_to_save`). `config.eval_fraction` of the prompts, with all their pairs, are held out
    (`split_by_prompt`) and evaluated each epoch. Pairs longer than `config.max_length` tokens keep their
    responses and lose the start of their prompt (counted in a "trimmed" event), as scoring does.
    """
    config = copied(config or RewardStageConfig())
    model_cfg = as_model_config(model)
    # held out by prompt: with several pairs per prompt no held-out answer is also trained on
    split = split_by_prompt(data, config.eval_fraction, seed=config.seed) if config.eval_fraction else None
    train_ds, eval_ds = (split["train"], split["test"]) if split else (data, None)
    metrics = stage_metrics(metrics, config.output_dir, "reward")
    torch.manual_seed(config.seed)  # the score head is initialised at random
    backbone, tokenizer = load_reward_backbone(model_cfg)
    if config.bf16 or config.fp16:
        # before PEFT copies the head into modules_to_save; RewardModel makes it so for scoring (and reloads) anyway
        _score_head_in_float32(backbone)
    if eval_ds is not None and config.eval_strategy == "no":
        config.eval_strategy = "epoch"
    training = with_mismatched_pairs(train_ds, config.mismatched_pairs, config.seed)
    if len(training) > len(train_ds):
        metrics.log_event("mismatched", f"{len(training) - len(train_ds)} mismatched pairs (a prompt's chosen answer "
                          f"over another prompt's) added to the {len(train_ds)} training pairs", step=0,
                          stage="reward", pairs=len(training) - len(train_ds))
    train_ids, trimmed = _tokenized_pairs(training, tokenizer, config.max_length)
    eval_ids, eval_trimmed = (_tokenized_pairs(eval_ds, tokenizer, config.max_length) if eval_ds is not None
                              else (None, 0))
    if trimmed + eval_trimmed:
        metrics.log_event("trimmed", f"{trimmed + eval_trimmed} of {len(data)} pairs were longer than "
                          f"max_length={config.max_length}: their prompts were trimmed from the left", step=0,
                          stage="reward", pairs=trimmed + eval_trimmed)
        _say_trimmed(trimmed + eval_trimmed, len(data), config.max_length, "training pairs")
    trainer, seconds = run_trl_trainer(
        "reward", _RewardTrainer, config, backbone, tokenizer, model_cfg, metrics, task_type="SEQ_CLS",
        peft_overrides={"modules_to_save": [score_head(backbone)]}, train_dataset=train_ids, eval_dataset=eval_ids)
    if model_cfg.load_in_4bit:  # score with the adapter dtype `RewardModel.load` will use
        _adapters_to_compute_dtype(trainer.model)
    reward_model = RewardModel(trainer.model, tokenizer, max_length=config.max_length or 512)
    if config.normalize_on:
        fit_normalization_on_pairs(reward_model, train_ds, config.normalize_on)
    final = reward_model.save(Path(config.output_dir) / FINAL)
    metrics.log_event("saved", f"reward model saved to {final}", step=trainer.state.global_step, stage="reward")
    return RewardModelResult(stage="reward", model_path=final, metrics=metrics, train_seconds=seconds,
                             reward_model=reward_model, eval_dataset=eval_ds)


class _RewardTrainer(trl.RewardTrainer):
    """TRL's RewardTrainer, keeping a fully trained score head of a 4-bit model in the compute dtype.

    TRL casts every trainable parameter of a quantized model to bf16 (QLoRA's recipe). LoRA layers cast their
    input, but the score head would then see hidden states of the compute dtype (fp32 on CPU).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        if getattr(base, "is_loaded_in_4bit", False):
            _adapters_to_compute_dtype(self.model, only=f".{score_head(self.model)}.")
