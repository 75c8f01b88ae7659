"""The CUDA paths for real: 4-bit NF4 loading, SFT / reward / PPO on a 4-bit base with LoRA.

Skipped without CUDA (conftest); their CPU twins run everywhere (test_sft, test_reward, test_ppo_trainer).
"""

from pathlib import Path

import pytest
import torch
from conftest import label_rows, sandbox_prompts

from rlhf_widgets.runtime.config import ModelConfig
from rlhf_widgets.runtime.generation import generate
from rlhf_widgets.runtime.models import load_causal_lm
from rlhf_widgets.sandbox import SimulatedAnnotator, gold_reward

pytestmark = pytest.mark.gpu


def test_4bit_load_on_cuda_generates() -> None:
    import bitsandbytes as bnb

    model, tok = load_causal_lm(ModelConfig(use_peft=True, load_in_4bit=True))
    assert next(model.parameters()).device.type == "cuda"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    quant = model.config.quantization_config
    quant = quant.to_dict() if hasattr(quant, "to_dict") else quant
    assert quant["bnb_4bit_quant_type"] == "nf4" and quant["bnb_4bit_use_double_quant"]
    outs = generate(model, tok, sandbox_prompts(8, seed=1), seed=0)
    assert sum(o.ended_with_eos for o in outs) >= 4


def test_sft_and_reward_4bit_lora_on_cuda(tmp_path: Path) -> None:
    from rlhf_widgets.labeling.pairs import generate_pairs
    from rlhf_widgets.stages.reward.model import RewardModel, RewardStageConfig, train_reward_model
    from rlhf_widgets.stages.sft import SFTStageConfig, train_sft

    cfg = ModelConfig(use_peft=True, load_in_4bit=True, lora_r=8)
    sft = train_sft(config=SFTStageConfig(output_dir=str(tmp_path / "sft"), max_steps=4, sandbox_demos=64,
                                          logging_steps=1), model=cfg)
    _, loss = sft.metrics.series("loss")
    assert loss and all(torch.isfinite(torch.tensor(loss)))
    rows = generate_pairs(sandbox_prompts(32, seed=2), model=sft.model_path, seed=0, show_progress=False)
    pairs = label_rows(rows, SimulatedAnnotator(seed=0))
    rm = train_reward_model(pairs, RewardStageConfig(output_dir=str(tmp_path / "rm"), max_steps=3, eval_fraction=0),
                            model=cfg)
    again = RewardModel.load(rm.model_path)
    p, r = [rows[0]["prompt"]], [rows[0]["response_a"]]
    assert torch.allclose(rm.reward_model.score(p, r), again.score(p, r), atol=1e-2)


def test_ppo_4bit_shared_base_on_cuda(tmp_path: Path) -> None:
    from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer

    cfg = PPOConfig(output_dir=str(tmp_path), num_updates=3, batch_size=16, mini_batch_size=8, num_ppo_epochs=2,
                    max_new_tokens=32, sample_every=1)
    trainer = PPOTrainer(sandbox_prompts(64, seed=3), cfg, model=ModelConfig(use_peft=True, load_in_4bit=True),
                         reward=gold_reward, gold=gold_reward)
    assert trainer.accelerator.device.type == "cuda"
    first = trainer.step()
    assert first["objective/kl"] == pytest.approx(0.0, abs=1e-3)
    assert first["val/ratio"] == pytest.approx(1.0, abs=1e-2)
    trainer.train(num_updates=3, show_progress=False)  # a total: two more updates
    assert trainer.update == 3
    assert all(torch.isfinite(torch.tensor(v)) for v in trainer.metrics.series("objective/kl")[1])
    assert (tmp_path / "last" / "trainer_state.pt").is_file()
