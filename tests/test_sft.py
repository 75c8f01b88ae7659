"""SFT stage on the sandbox: improves gold over the base model; LoRA and 4-bit+LoRA run on CPU."""

from pathlib import Path

import torch
from conftest import sandbox_prompts

from rlhf_widgets.runtime.config import ModelConfig
from rlhf_widgets.runtime.generation import SamplingSettings, generate
from rlhf_widgets.runtime.metrics import MetricsLog
from rlhf_widgets.runtime.models import load_causal_lm
from rlhf_widgets.sandbox import gold_score
from rlhf_widgets.stages.sft import SFTStageConfig, train_sft


def _gold_and_eos(model_path: str, prompts: list[str]) -> tuple[float, float]:
    model, tok = load_causal_lm(model_path)
    outs = generate(model, tok, prompts, SamplingSettings(max_new_tokens=64), seed=0)
    gold = sum(gold_score(p, o.text) for p, o in zip(prompts, outs, strict=True)) / len(prompts)
    return gold, sum(o.ended_with_eos for o in outs) / len(outs)


def test_sft_beats_base_on_gold_and_ends_with_eos(sft_model_dir: Path) -> None:
    prompts = sandbox_prompts(96, seed=5, split="test")
    base_gold, _ = _gold_and_eos("sandbox", prompts)
    sft_gold, sft_eos = _gold_and_eos(str(sft_model_dir), prompts)
    assert sft_gold > base_gold + 0.5, (sft_gold, base_gold)
    assert sft_eos > 0.8


def test_sft_logs_a_falling_loss(tmp_path: Path) -> None:
    log = MetricsLog()
    result = train_sft(config=SFTStageConfig(output_dir=str(tmp_path), sandbox_demos=160, num_train_epochs=1,
                                             logging_steps=1), metrics=log)
    assert result.metrics is log and result.stage == "sft"
    steps, losses = log.series("loss")
    assert len(losses) == 10  # 160 demos / 16 per step, one logged loss per step
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def _lora_run(tmp_path: Path, load_in_4bit: bool) -> Path:
    cfg = SFTStageConfig(output_dir=str(tmp_path), sandbox_demos=48, max_steps=3, learning_rate=1e-3)
    model = ModelConfig(use_peft=True, load_in_4bit=load_in_4bit, lora_r=8)
    return train_sft(config=cfg, model=model).model_path


def test_lora_sft_saves_merged_weights_that_differ_from_base(tmp_path: Path) -> None:
    path = _lora_run(tmp_path, load_in_4bit=False)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    tuned, _ = load_causal_lm(str(path))
    base, _ = load_causal_lm("sandbox")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(tuned.state_dict()[name], base.state_dict()[name])


def test_4bit_lora_sft_runs_on_cpu_and_reloads_as_adapter(tmp_path: Path) -> None:
    path = _lora_run(tmp_path, load_in_4bit=True)
    assert (path / "adapter_config.json").is_file()
    model, tok = load_causal_lm(ModelConfig(model_name_or_path=str(path), use_peft=True, load_in_4bit=True))
    out = generate(model, tok, ["My order hasn't arrived. What should I do?"], SamplingSettings(max_new_tokens=8))
    assert isinstance(out[0].text, str)
