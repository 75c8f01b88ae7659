"""Model loading in one place: hub id or local path, LoRA, 4-bit, device and dtype.

Every stage loads through here so that the same rules hold everywhere:
- `"sandbox"` names the offline tiny base model; anything else is a local directory or a hub id;
- a directory holding a PEFT adapter (`adapter_config.json`) loads its base and attaches the adapter;
- bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU;
- 4-bit is nf4 with double quantization (QLoRA) through bitsandbytes;
- the tokenizer pads on the left (generation) with a pad token distinct from EOS, so a padded EOS
  is never mistaken for the end of a response.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import LoraConfig, PeftModel
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl import get_peft_config

from rlhf_widgets.runtime import hub, quiet
from rlhf_widgets.runtime.chat import ensure_chat_template, stop_token_ids
from rlhf_widgets.runtime.config import SANDBOX, ModelConfig, as_model_config
from rlhf_widgets.sandbox import base_model_path

quiet.quiet_libraries()  # transformers' weight-loading bars off (quiet.py)

ModelLike = (str | os.PathLike | ModelConfig | PreTrainedModel | PeftModel
             | tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase])
"""What every stage's `model=` takes: a hub id, a local directory, 'sandbox', a `ModelConfig` (LoRA, 4-bit,
dtype, device), or an already loaded model — alone (its tokenizer is loaded from where the model came from)
or as a `(model, tokenizer)` pair."""

PAD_TOKEN = "<|pad|>"
"""Pad token added to tokenizers that have none, or whose pad token is their EOS token."""

_BNB_CPU_BLOCK = 64  # bitsandbytes' CPU 4-bit kernels need layer widths divisible by this


class ModelLoadError(OSError):
    """A model or tokenizer could not be loaded; the message says which and why."""


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """`'sandbox'` → the committed sandbox base model; an existing path → its absolute form (adapters saved
    from it record where their base is, and must find it from any working directory); else a hub id."""
    name = str(name_or_path)
    if name == SANDBOX:
        return str(base_model_path())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def choose_device(requested: str = "auto") -> torch.device:
    """`'auto'` → CUDA when available, else CPU. Explicit requests are checked, not silently replaced."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch sees no CUDA device")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' was requested but torch sees no MPS device")
    return torch.device(requested)


def choose_dtype(device: torch.device, requested: str | None = "auto") -> torch.dtype:
    """`'auto'` → bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU/MPS."""
    if requested not in (None, "auto"):
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _is_adapter_dir(path: str) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _hub_kwargs(name: str) -> dict[str, Any]:
    """`from_pretrained` keywords for `name`: none for a local directory or a reachable hub id; `local_files_only`
    when the hub cannot be reached (a copy cached by an earlier download still loads — after one request, not after
    the libraries' retries). An id the hub does not have raises ModelLoadError at once."""
    if Path(name).exists():
        return {}
    status = hub.probe(name, "model")
    if status == "missing":
        raise ModelLoadError(f"'{name}' is not a local directory, and the Hugging Face hub has no model by that id (or "
                             "it is private / gated and you are not logged in): check the id, or pass a local model "
                             "directory, or 'sandbox' for the offline default")
    return {"local_files_only": True} if status == "unreachable" else {}


def _load_hf_config(path: str) -> transformers.PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(path, **_hub_kwargs(path))
    except OSError as err:
        if Path(path).exists():
            raise ModelLoadError(f"'{path}' exists but holds no loadable model config ({err})") from err
        # from None: the hub client's and transformers' chained tracebacks (a screen of them) say no more than this
        raise _not_available(path) from None


def _not_available(name: str) -> ModelLoadError:
    """The one error for a model that is neither a local directory nor to be had from the hub: why, and what to do."""
    if hub.offline():
        why, fix = ("HF_HUB_OFFLINE is set, and no copy is in the local cache",
                    "; or, with network access, unset HF_HUB_OFFLINE to download it")
    else:
        why, fix = "no network, or an unknown id", ""
    return ModelLoadError(f"Could not load model '{name}': it is not a local directory and the Hugging Face hub "
                          f"could not provide it ({why}). Pass a local model directory, or 'sandbox' for the offline "
                          f"default{fix}.")


def check_4bit_supported(model_config: transformers.PretrainedConfig, device: torch.device) -> None:
    """Raise a clear error where bitsandbytes 4-bit cannot run this model on this device."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:  # pragma: no cover - bitsandbytes is a core dependency
        raise ModelLoadError("load_in_4bit=True needs bitsandbytes: pip install bitsandbytes") from err
    if device.type == "cpu":
        widths = {
            name: getattr(model_config, name)
            for name in ("hidden_size", "intermediate_size")
            if getattr(model_config, name, None) is not None
        }
        bad = {k: v for k, v in widths.items() if v % _BNB_CPU_BLOCK}
        if bad:
            raise ModelLoadError(
                f"4-bit on CPU needs layer widths divisible by {_BNB_CPU_BLOCK} (bitsandbytes' CPU kernels); "
                f"this model has {bad}. Use a GPU, or load without load_in_4bit."
            )


def quantization_config(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """nf4 + double-quant BitsAndBytesConfig when `cfg.load_in_4bit`, computing in `dtype`; else None."""
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return None
    if cfg.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=cfg.use_bnb_nested_quant,
        bnb_4bit_compute_dtype=dtype,
    )


def lora_config(cfg: ModelConfig, task_type: str = "CAUSAL_LM") -> LoraConfig | None:
    """The LoRA config for `cfg` (None unless `cfg.use_peft`); `task_type='SEQ_CLS'` for reward models."""
    if not cfg.use_peft:
        return None
    peft_config = get_peft_config(cfg)
    peft_config.task_type = task_type
    return peft_config


def load_tokenizer(name_or_path: str | os.PathLike, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """Load a tokenizer with a chat format and a pad token distinct from every token that ends a response.

    A tokenizer without a chat format gets the documented plain one (`chat.PLAIN_CHAT_TEMPLATE`, or
    `chat.ENCODER_CHAT_TEMPLATE` for an encoder), said once. The pad token is added as `<|pad|>` when there is
    none or when it is one of the stop tokens (`chat.stop_token_ids`: the checkpoint's `generation_config` EOS
    list, the tokenizer's EOS, the turn end) — Qwen ships pad `<|endoftext|>`, which its EOS list names. A
    tokenizer that gains a token needs `model.resize_token_embeddings(len(tokenizer))`; `load_causal_lm` /
    `load_reward_backbone` do that.
    """
    path = resolve_model_path(name_or_path)
    base = _adapter_base(path)
    source = path if base is None or (Path(path) / "tokenizer_config.json").is_file() else base
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **_hub_kwargs(source))
    except OSError as err:
        _load_hf_config(source)  # raises the clear "offline / unknown id" error when that is the cause
        raise ModelLoadError(f"Could not load a tokenizer from '{source}': {err}") from err
    ensure_chat_template(tokenizer, str(name_or_path))
    ends = stop_token_ids(tokenizer, _generation_config(base or path), keep_pad=True)
    if tokenizer.pad_token is None or tokenizer.pad_token_id in ends:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = padding_side
    return tokenizer


def _adapter_base(path: str) -> str | None:
    """The base model a saved PEFT adapter directory records, or None when `path` is not one."""
    if not _is_adapter_dir(path):
        return None
    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


def _generation_config(path: str) -> GenerationConfig | None:
    """The checkpoint's `generation_config.json` (None when it has none)."""
    path = resolve_model_path(path)
    try:
        return GenerationConfig.from_pretrained(path, **_hub_kwargs(path))
    except OSError:
        return None


def _from_pretrained(auto_cls: Any, path: str, cfg: ModelConfig, device: torch.device, **kwargs: Any) -> Any:
    dtype = choose_dtype(device, cfg.dtype)
    quant = quantization_config(cfg, device, dtype)
    if quant is not None:
        check_4bit_supported(_load_hf_config(path), device)
        device_map = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
        kwargs.update(quantization_config=quant, device_map=device_map)
    try:
        model = auto_cls.from_pretrained(path, dtype=dtype, attn_implementation=cfg.attn_implementation,
                                         **_hub_kwargs(path), **kwargs)
    except OSError as err:
        _load_hf_config(path)
        raise ModelLoadError(f"Could not load model weights from '{path}': {err}") from err
    if quant is None:
        model.to(device)
    return model


def _match_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        # every token that ends a response (the checkpoint's EOS list, the turn end), so that generate — ours and
        # TRL's GRPO / RLOO, which read this — stops at the turn end of any family
        model.generation_config.eos_token_id = stop_token_ids(tokenizer, model.generation_config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_causal_lm(
    model: ModelLike = SANDBOX, *, tokenizer: PreTrainedTokenizerBase | None = None, merge_adapter: bool = True,
    chat: bool = False,
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """The one place that turns a `model=` argument (see `ModelLike`) into a loaded causal LM and tokenizer
    (left padding, pad ≠ EOS) on the configured device.

    The model comes back without a *new* LoRA adapter (trainers add `lora_config(cfg)` themselves); if the
    path is a saved adapter directory, its base is loaded and the adapter attached — merged into the weights
    when `merge_adapter` and the base is not quantized, else as a `PeftModel`. Dropout is off (`eval()`);
    trainers switch to train mode themselves. A loaded model is returned as it is, with its tokenizer: the
    pair's second element, `tokenizer=`, or else the tokenizer saved where the model came from. `tokenizer=`
    goes with a loaded model only (ValueError with a hub id, a path or a `ModelConfig`, or with a pair).

    `chat=True` is for callers that ask the model questions as chats, in batches (the judges, the probe
    classifier, Constitutional AI): a loaded model must come with its tokenizer (none is looked up for it), and
    the tokenizer must have a chat template and a pad token — ValueError otherwise. A model this function loads
    itself always has both (`load_tokenizer`).
    """
    if isinstance(model, tuple):
        if len(model) != 2 or tokenizer is not None:
            raise ValueError("pass a loaded model as (model, tokenizer), or as model and tokenizer=, not both")
        model, tokenizer = model
    if tokenizer is not None:
        if isinstance(model, (str, os.PathLike, ModelConfig)):
            raise ValueError("tokenizer= goes with an already loaded model; a model id or path loads its own")
        loaded = model
    elif chat and not isinstance(model, (str, os.PathLike, ModelConfig)):
        raise ValueError(f"a loaded model ({type(model).__name__}) needs its tokenizer: pass tokenizer=")
    elif isinstance(model, nn.Module):
        loaded, tokenizer = model, _tokenizer_of(model)
    else:
        loaded, tokenizer = _load_causal_lm(as_model_config(model), merge_adapter)
    if chat:
        _check_chat_tokenizer(tokenizer)
    return loaded, tokenizer


def load_chat_model(model: Any, tokenizer: PreTrainedTokenizerBase | None = None
                    ) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """`load_causal_lm(model, tokenizer=tokenizer, chat=True)`: a chat model to ask questions of, in batches, from
    a hub id, a path, a `ModelConfig`, a loaded model and its `tokenizer`, or a `(model, tokenizer)` pair."""
    return load_causal_lm(model, tokenizer=tokenizer, chat=True)


def _load_causal_lm(cfg: ModelConfig, merge_adapter: bool) -> tuple[PreTrainedModel | PeftModel,
                                                                   PreTrainedTokenizerBase]:
    """`load_causal_lm` of a model not loaded yet: its tokenizer, then its weights (a saved adapter on its base)."""
    device = choose_device(cfg.device)
    path = resolve_model_path(cfg.model_name_or_path)
    tokenizer = load_tokenizer(path)
    base = _adapter_base(path)
    if base is not None:
        loaded = _from_pretrained(AutoModelForCausalLM, resolve_model_path(base), cfg, device)
        _match_vocab(loaded, tokenizer)
        loaded = PeftModel.from_pretrained(loaded, path)
        if merge_adapter and not (cfg.load_in_4bit or cfg.load_in_8bit):
            loaded = loaded.merge_and_unload()
    else:
        loaded = _from_pretrained(AutoModelForCausalLM, path, cfg, device)
        _match_vocab(loaded, tokenizer)
    return loaded.eval(), tokenizer


def _check_chat_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """ValueError unless the tokenizer can format chats and pad a batch (`load_causal_lm(..., chat=True)`)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template, so it cannot be asked a question as a chat: use an "
                         "instruct/chat model, or set tokenizer.chat_template")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token, so prompts cannot be batched: load the model with "
                         "rlhf_widgets.runtime.models.load_causal_lm (it adds one), or set tokenizer.pad_token")


def _tokenizer_of(model: nn.Module) -> PreTrainedTokenizerBase:
    """The tokenizer saved where a loaded model came from (its `name_or_path`)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    source = getattr(base, "name_or_path", "") or getattr(getattr(base, "config", None), "_name_or_path", "")
    if not source:
        raise ValueError("a loaded model without a name_or_path: pass model=(model, tokenizer) so the stage knows "
                         "its tokenizer")
    return load_tokenizer(source)


def model_name(model: ModelLike) -> str:
    """A short name for a `model=` argument, as tables and the labeling panel show it: a hub id as is, a local
    path by its last two parts, a loaded model by its `name_or_path`."""
    if isinstance(model, tuple):
        model = model[0]
    if isinstance(model, nn.Module):
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        return str(getattr(base, "name_or_path", "") or type(base).__name__)
    name = str(model.model_name_or_path if isinstance(model, ModelConfig) else model)
    path = Path(name)
    return "/".join(path.parts[-2:]) if path.exists() else name


def load_reward_backbone(
    cfg: ModelConfig | str | os.PathLike = SANDBOX, num_labels: int = 1
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a sequence classifier (`num_labels` scores read at the last real token) and its tokenizer."""
    cfg = as_model_config(cfg)
    device = choose_device(cfg.device)
    path = resolve_model_path(cfg.model_name_or_path)
    tokenizer = load_tokenizer(path, padding_side="right")
    if _is_adapter_dir(path):  # an SFT LoRA adapter: merge it into a plain causal LM first, then reuse the weights
        merged, _ = load_causal_lm(as_model_config(cfg, load_in_4bit=False, use_peft=False))
        with_head = AutoModelForSequenceClassification.from_config(merged.config, num_labels=num_labels)
        with_head.load_state_dict(merged.state_dict(), strict=False)
        model = with_head.to(device)
    else:
        with quiet.new_head_expected("score"):  # the score head is new: its load report is no news
            model = _from_pretrained(AutoModelForSequenceClassification, path, cfg, device, num_labels=num_labels)
    _match_vocab(model, tokenizer)
    return model.eval(), tokenizer


# known decoder layouts: (the attribute holding the blocks, the attribute holding the final norm) of the stack
_DECODER_LAYOUTS = (("layers", "norm"), ("h", "ln_f"), ("layers", "final_layer_norm"))


def decoder_layout(stack: nn.Module) -> tuple[str, str]:
    """`(layers attribute, final-norm attribute)` of a decoder stack (`model.base_model` of a causal LM):
    `layers` + `norm` (Llama, Qwen, Gemma, Mistral, Phi-3), `h` + `ln_f` (GPT-2), `layers` + `final_layer_norm`
    (GPT-NeoX). Raises ValueError naming the class for any other layout."""
    for layers, norm in _DECODER_LAYOUTS:
        blocks, final_norm = getattr(stack, layers, None), getattr(stack, norm, None)
        if isinstance(blocks, nn.ModuleList) and isinstance(final_norm, nn.Module):
            return layers, norm
    raise ValueError(f"{type(stack).__name__}: unknown decoder layout (expected one of {_DECODER_LAYOUTS} as "
                     "(layers, final norm) attributes)")
