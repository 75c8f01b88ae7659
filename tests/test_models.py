import traceback
from pathlib import Path

import pytest
import torch

from rlhf_widgets.runtime.config import ModelConfig
from rlhf_widgets.runtime.models import (
    ModelLoadError,
    check_4bit_supported,
    choose_dtype,
    load_causal_lm,
    load_reward_backbone,
    load_tokenizer,
)


def test_tokenizer_gets_pad_distinct_from_eos_and_left_padding(hub_like_model_dir: Path) -> None:
    tok = load_tokenizer(hub_like_model_dir)
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"


def test_causal_lm_embeddings_cover_added_pad(hub_like_model_dir: Path) -> None:
    model, tok = load_causal_lm(ModelConfig(model_name_or_path=str(hub_like_model_dir)))
    assert model.get_input_embeddings().num_embeddings >= len(tok)
    assert model.config.pad_token_id == tok.pad_token_id
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32


def test_reward_backbone_has_one_score_and_right_padding(hub_like_model_dir: Path) -> None:
    model, tok = load_reward_backbone(str(hub_like_model_dir))
    assert model.config.num_labels == 1 and tok.padding_side == "right"
    batch = tok(["hello there", "my order"], return_tensors="pt", padding=True)
    assert model(**batch).logits.shape == (2, 1)


def shown_traceback(err: BaseException) -> str:
    """What Python (or a notebook) prints for `err`: its traceback and every exception chained to it."""
    return "".join(traceback.format_exception(type(err), err, err.__traceback__))


def assert_one_readable_error(err: BaseException, model: str) -> None:
    """One exception on screen, naming the model and the way out; no chained hub / HTTP tracebacks above it."""
    shown = shown_traceback(err)
    assert shown.count("Traceback (most recent call last)") == 1, shown
    assert "LocalEntryNotFoundError" not in shown and "huggingface_hub" not in shown, shown
    assert model in str(err) and "'sandbox'" in str(err) and "local model directory" in str(err), str(err)


@pytest.mark.parametrize("load", [
    lambda name: load_causal_lm(name),
    lambda name: load_causal_lm(ModelConfig(model_name_or_path=name, use_peft=True, load_in_4bit=True)),  # nb 07
    lambda name: load_tokenizer(name),
    lambda name: load_reward_backbone(name),
], ids=["causal_lm", "causal_lm_4bit", "tokenizer", "reward_backbone"])
def test_unknown_hub_id_offline_gives_one_readable_error(load) -> None:
    """HF_HUB_OFFLINE is set (conftest): no cached copy, so one ModelLoadError that says so and what to do."""
    with pytest.raises(ModelLoadError, match="not a local directory.*HF_HUB_OFFLINE") as caught:
        load("no-such-org/no-such-model")
    assert_one_readable_error(caught.value, "no-such-org/no-such-model")


def test_cpu_dtype_is_fp32_and_explicit_dtype_is_kept() -> None:
    assert choose_dtype(torch.device("cpu")) == torch.float32
    assert choose_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16


def test_4bit_on_cpu_rejects_widths_not_multiple_of_64() -> None:
    from transformers import LlamaConfig

    with pytest.raises(ModelLoadError, match="hidden_size.*96"):
        check_4bit_supported(LlamaConfig(hidden_size=96, intermediate_size=128), torch.device("cpu"))
    check_4bit_supported(LlamaConfig(hidden_size=128, intermediate_size=256), torch.device("cpu"))


def test_model_config_validates_settings() -> None:
    with pytest.raises(ValueError, match="load_in_4bit=True needs use_peft=True"):
        ModelConfig(load_in_4bit=True)
    with pytest.raises(ValueError, match="device='tpu'"):
        ModelConfig(device="tpu")


@pytest.mark.timeout(60)
def test_unreachable_hub_fails_fast_for_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode, nothing answers: one refused request and a clear error, not ~85 s of retries."""
    import socket
    import time

    import huggingface_hub.constants

    with socket.socket() as s:  # a closed local port: connections are refused at once
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="hub could not provide it") as caught:
        load_causal_lm("nobody-here/no-model")
    assert time.perf_counter() - start < 2.0
    assert_one_readable_error(caught.value, "nobody-here/no-model")


def test_trl_stages_train_in_bf16_where_the_cpu_computes_it(monkeypatch: pytest.MonkeyPatch, pretend_cpu_bf16) -> None:
    """Every TRL stage's config (TrainingDefaults) trains under bf16 autocast on a CPU with native bf16 by default,
    in float32 on one without; `bf16=False` and `RLHF_WIDGETS_CPU_BF16=0` keep float32."""
    from rlhf_widgets.stages.dpo import DPOStageConfig
    from rlhf_widgets.stages.reward.model import RewardStageConfig
    from rlhf_widgets.stages.sft import SFTStageConfig

    if torch.cuda.is_available():
        pytest.skip("the CPU rule")
    for config_cls in (SFTStageConfig, RewardStageConfig, DPOStageConfig):
        pretend_cpu_bf16(True)
        assert config_cls(output_dir="unused").bf16 is True
        assert config_cls(output_dir="unused", bf16=False).bf16 is False
        pretend_cpu_bf16(False)
        assert config_cls(output_dir="unused").bf16 is False
    monkeypatch.setenv("RLHF_WIDGETS_CPU_BF16", "0")  # the workbench-wide float32 switch
    from rlhf_widgets.runtime.precision import cpu_has_native_bf16, resolve_mixed_precision

    assert resolve_mixed_precision("auto", torch.device("cpu")) == "no" and not cpu_has_native_bf16()


def test_sampling_autocasts_a_float32_model_where_bf16_is_native(pretend_cpu_bf16) -> None:
    """`SamplingSettings.mixed_precision="auto"` (the default) samples a float32 model under bf16 autocast on a CPU
    with native bf16, in float32 on one without; "no" is float32 anywhere; a model stored in bf16 samples in its
    own dtype."""
    from rlhf_widgets.runtime.generation import SamplingSettings
    from rlhf_widgets.runtime.precision import inference_autocast

    model, _ = load_causal_lm("sandbox")

    def autocast_on(setting: str, m=model) -> bool:
        with inference_autocast(m, setting):
            return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16

    pretend_cpu_bf16(True)
    assert autocast_on("auto") and autocast_on("bf16") and not autocast_on("no")
    assert not autocast_on("auto", model.to(torch.bfloat16))
    pretend_cpu_bf16(False)
    assert not autocast_on("auto", model.float())
    assert SamplingSettings().mixed_precision == "auto"
    with pytest.raises(ValueError, match="mixed_precision='fp32'"):
        SamplingSettings(mixed_precision="fp32")


def test_cpu_precision_path_names_the_path_and_its_reason(pretend_cpu_bf16, monkeypatch) -> None:
    """The line CI and the quickstart print: which precision "auto" takes here, and why."""
    from rlhf_widgets.runtime.precision import cpu_precision_path

    pretend_cpu_bf16(True)
    assert cpu_precision_path().startswith("bf16 autocast") and "avx512_bf16" in cpu_precision_path()
    pretend_cpu_bf16(False)
    assert cpu_precision_path().startswith("float32") and "no native bf16" in cpu_precision_path()
    pretend_cpu_bf16(True)
    monkeypatch.setenv("RLHF_WIDGETS_CPU_BF16", "0")
    assert cpu_precision_path() == "float32 (RLHF_WIDGETS_CPU_BF16=0; the CPU has avx512_bf16)"
