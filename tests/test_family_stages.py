"""Every stage on every model family (tests/families.py: tiny random-weight checkpoints saved the way each
family's hub checkpoints are): where a response ends, what is sampled, what the critic and the reward model
read, and that SFT → pairs → reward model → PPO / DPO / GRPO → best-of-N → evaluation runs."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import datasets
import pytest
import torch
from families import FAMILIES

from rlhf_widgets.runtime import chat
from rlhf_widgets.runtime.chat import PLAIN_CHAT_TEMPLATE, ChatFormatWarning, stop_token_ids
from rlhf_widgets.runtime.generation import SamplingOverrideWarning, SamplingSettings, generate
from rlhf_widgets.runtime.models import decoder_layout, load_causal_lm, load_reward_backbone
from rlhf_widgets.stages.ppo import PPOConfig, PPOTrainer
from rlhf_widgets.stages.ppo.backbone import SharedBackbone, _run_layers
from rlhf_widgets.stages.reward.model import RewardModel, TrimmedWarning

PROMPTS = ["My order hasn't arrived yet. What should I do?", "Can I return a jacket that doesn't fit?",
           "Thanks for your patience!", "Is there anything else I can help you with today?"]
SPLIT_REFUSED = {"gpt2"}
"""families whose embedding adds positions to `inputs_embeds`, so the value network's split forward is refused"""


def stop_token(family_name: str, tokenizer) -> int:
    """The token that ends an answer of this family: its chat format's turn end, or EOS (plain format)."""
    family = FAMILIES[family_name]
    return tokenizer.convert_tokens_to_ids(family.turn_end or family.eos)


def force_token(model: torch.nn.Module, token: int):
    """Make `token` the overwhelmingly likely next token at every position (a hook on the LM head)."""
    head = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_output_embeddings()

    def hook(_module, _args, logits):
        logits = logits.clone()
        logits[..., token] += 1e4
        return logits

    return head.register_forward_hook(hook)


def test_stop_tokens_keep_the_checkpoint_list_and_never_the_pad(
    family_name: str, family_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    family = FAMILIES[family_name]
    monkeypatch.setattr(chat, "_WARNED", set())  # "said once" per process: another test may have heard it already
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, tokenizer = load_causal_lm(family_dir)
    stops = stop_token_ids(tokenizer, model.generation_config)
    assert stop_token(family_name, tokenizer) in stops
    shipped = [tokenizer.convert_tokens_to_ids(t) for t in family.generation_eos]
    assert set(shipped) - {tokenizer.pad_token_id} <= set(stops)
    assert model.generation_config.eos_token_id == stops  # what TRL's GRPO stops at, too
    assert tokenizer.pad_token_id not in stops and tokenizer.pad_token_id != tokenizer.eos_token_id
    if family.chat_template is None:  # GPT-2 / Pythia bases: the documented plain format, said once
        assert tokenizer.chat_template == PLAIN_CHAT_TEMPLATE
        assert any(issubclass(w.category, ChatFormatWarning) for w in caught)


def test_sampling_stops_at_the_turn_end_and_draws_the_plain_distribution(family_name: str, family_dir: Path) -> None:
    family = FAMILIES[family_name]
    model, tokenizer = load_causal_lm(family_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hook = force_token(model, stop_token(family_name, tokenizer))
        try:
            outs = generate(model, tokenizer, PROMPTS[:2], SamplingSettings(max_new_tokens=6), seed=0)
        finally:
            hook.remove()
    assert all(o.ended_with_eos and o.num_tokens == 1 and o.text == "" for o in outs), outs
    overrides = [str(w.message) for w in caught if issubclass(w.category, SamplingOverrideWarning)]
    if "repetition_penalty" in family.generation:  # Qwen ships one: not applied, and said
        assert overrides and "repetition_penalty" in overrides[0]
    assert model.generation_config.to_dict() == load_causal_lm(family_dir)[0].generation_config.to_dict()


def test_ppo_first_update_is_exact_and_responses_end_at_the_turn_end(family_name: str, family_dir: Path,
                                                                     tmp_path: Path) -> None:
    """With policy == reference the first update has KL 0, ratio 1, no clipping — on every family, Qwen's
    repetition penalty included; a response that ends with the family's turn end counts as ended and is scored
    without what a model might sample after it."""
    seen: list[str] = []

    def length(prompts, responses):
        seen.extend(responses)
        return [float(len(r.split())) for r in responses]

    config = PPOConfig(output_dir=str(tmp_path), num_updates=2, batch_size=4, mini_batch_size=4, num_ppo_epochs=1,
                       max_new_tokens=8, sample_every=0, value_layers_fraction=0.75,
                       mixed_precision="no")  # float32: the exactness bound is float32's
    trainer = PPOTrainer(PROMPTS, config, model=family_dir, reward=length)
    first = trainer.step()
    assert abs(first["objective/kl"]) < 1e-3, first["objective/kl"]
    assert first["val/ratio"] == pytest.approx(1.0, abs=1e-4)
    assert first["policy/clipfrac_avg"] == 0.0
    seen.clear()
    hook = force_token(trainer.backend.sampling_model, stop_token(family_name, trainer.tokenizer))
    try:
        second = trainer.step()
    finally:
        hook.remove()
    assert second["val/num_eos_tokens"] == 4 and second["val/response_length"] == 1.0
    assert seen == ["", "", "", ""]  # nothing past the turn end reached the reward


def test_value_network_split_equals_the_full_forward_or_is_refused(family_name: str, family_dir: Path) -> None:
    """The value adapter on the top layers with a once-computed trunk equals the full forward, with each layer's
    own attention type (sliding / full) at an odd split; where it cannot (GPT-2 adds positions to
    `inputs_embeds`), the split is refused with a warning and the value adapter covers every layer."""
    from peft import LoraConfig

    model, tokenizer = load_causal_lm(family_dir)
    stack = model.base_model
    n_layers = len(getattr(stack, decoder_layout(stack)[0]))
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = SharedBackbone(model, lora, value_layers=n_layers - 1)
    if family_name in SPLIT_REFUSED:
        assert backbone.value_start == 0 and any("differs from the full forward" in str(w.message) for w in caught)
        return
    assert backbone.value_start == 1
    prompts = [PROMPTS[0] * 3, PROMPTS[1]]  # longer than the sliding window (8), left-padded
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "position_ids": (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in backbone.value_parameters:
            p.add_(0.05 * torch.randn_like(p))
        backbone.fast.activate(backbone.value_adapters)
        full = backbone.value_head(backbone._stack(**inputs, use_cache=False).last_hidden_state).squeeze(-1)
        split = backbone.values(**inputs)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(split[real], full[real], rtol=1e-4, atol=1e-4)
    layer_types = getattr(stack.config, "layer_types", None)
    with _run_layers(stack, slice(1, None), final_norm=True):
        if layer_types is not None:  # each layer keeps its own type inside the slice
            assert stack.config.layer_types == layer_types[1:]
    assert getattr(stack.config, "layer_types", None) == layer_types


def test_reward_scores_read_the_response_end_of_a_long_conversation(family_name: str,
                                                                    family_reward_dir: Path) -> None:
    model, tokenizer = load_reward_backbone(family_reward_dir)
    rm = RewardModel(model, tokenizer, max_length=24)
    long_prompt = " ".join([PROMPTS[0]] * 8)
    with pytest.warns(TrimmedWarning, match="2 of 2 conversations"):
        scores = rm.raw_score([long_prompt, long_prompt], ["Yes, I will send a new one today.", "No."])
    assert scores[0] != scores[1]  # the responses are read, whatever the prompt's length
    assert rm.trimmed == 2


def test_every_stage_runs_on_every_family(family_name: str, family_dir: Path, tmp_path: Path) -> None:
    """SFT (with a system message: Gemma 2's format folds it), pairs, reward model, DPO, GRPO, best-of-N and the
    comparison table, at the smallest size, from one family checkpoint; each result loads."""
    from rlhf_widgets import (
        DPOStageConfig,
        GRPOStageConfig,
        RewardStageConfig,
        SFTStageConfig,
        best_of_n,
        compare_policies,
        train_dpo,
        train_grpo,
        train_reward_model,
        train_sft,
    )
    from rlhf_widgets.labeling.pairs import generate_pairs

    system = [{"role": "system", "content": "Be brief."}]
    demos = datasets.Dataset.from_list(
        [{"prompt": system + [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": a}]}
         for p, a in zip(PROMPTS, ["Please share your order number.", "Yes, within 30 days.", "Thank you!",
                                   "No, thanks."], strict=True)])
    tiny = dict(max_steps=1, per_device_train_batch_size=2, logging_steps=1)
    sft = train_sft(demos, SFTStageConfig(output_dir=str(tmp_path / "sft"), **tiny), model=family_dir)
    rows = generate_pairs(PROMPTS, model=sft.model_path, k=2, seed=0, show_progress=False,
                          sides=[SamplingSettings(max_new_tokens=6)])
    pairs = datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content": a}],
          "rejected": [{"role": "assistant", "content": b}]}
         for r, (a, b) in zip(rows * 2, [("Sure, I can help.", "No."), ("Thanks!", "Whatever.")] * len(rows),
                              strict=False)])
    rm = train_reward_model(pairs, RewardStageConfig(output_dir=str(tmp_path / "rm"), eval_fraction=0, **tiny),
                            model=sft.model_path)
    dpo = train_dpo(pairs, DPOStageConfig(output_dir=str(tmp_path / "dpo"), **tiny), model=sft.model_path)
    grpo = train_grpo(PROMPTS[:2], GRPOStageConfig(output_dir=str(tmp_path / "grpo"), num_generations=2,
                                                   max_completion_length=6, **tiny),
                      model=sft.model_path, reward=rm.reward_model)
    best = best_of_n(PROMPTS[:2], model=sft.model_path, reward=rm.reward_model, n=2,
                     settings=SamplingSettings(max_new_tokens=6))
    table = compare_policies({"SFT": sft.model_path, "DPO": dpo.model_path, "GRPO": grpo.model_path},
                             PROMPTS[:2], baseline="SFT", reward_model=rm.reward_model, kl_reference=sft.model_path)
    assert len(best.responses) == 2 and table.loc["SFT", "rm_win_rate"] == 0.5
    assert abs(table.loc["SFT", "kl_to_reference"]) < 1e-4
    assert rm.reward_model(PROMPTS[:1], ["Hello."]).shape == (1,)


def test_a_messages_dataset_trains_on_the_last_answer_only() -> None:
    from rlhf_widgets.stages.sft import as_prompt_completion

    conversation = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
                    {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                    {"role": "assistant", "content": "a2"}]
    split = as_prompt_completion(datasets.Dataset.from_list([{"messages": conversation}]))
    assert split.column_names == ["prompt", "completion"]
    assert split[0]["prompt"] == conversation[:-1] and split[0]["completion"] == conversation[-1:]
    with pytest.raises(ValueError, match="row 1: 'messages' must end with an assistant answer"):
        as_prompt_completion(datasets.Dataset.from_list([{"messages": conversation},
                                                         {"messages": conversation[:2]}]))


def test_a_real_pretrained_encoder_trains_and_scores_as_the_reward_model(minilm_dir: Path, tmp_path: Path) -> None:
    """MiniLM (a real pretrained BERT-style encoder, no chat format) trains through the reward stage with the
    plain encoder format, scores with its own tokenizer — reading the response's end of a long conversation —
    and serves as best-of-N's reward for a policy with another tokenizer."""
    from rlhf_widgets import RewardStageConfig, best_of_n, train_reward_model
    from rlhf_widgets.runtime.chat import ENCODER_CHAT_TEMPLATE
    from rlhf_widgets.sandbox import SimulatedAnnotator, curt_demo, ideal_response, make_prompts

    prompts = make_prompts(32, seed=4)
    rng = random.Random(0)
    rows = []
    for p in prompts:
        good, bad = ideal_response(p), curt_demo(p, rng)
        choice = SimulatedAnnotator(temperature=0.1, seed=0)(p.text, good, bad)
        chosen, rejected = (good, bad) if choice == "a" else (bad, good)
        rows.append({"prompt": [{"role": "user", "content": p.text}],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}]})
    result = train_reward_model(datasets.Dataset.from_list(rows),
                                RewardStageConfig(output_dir=str(tmp_path), max_steps=4, eval_fraction=0,
                                                  per_device_train_batch_size=8, learning_rate=5e-5),
                                model=minilm_dir)
    rm = RewardModel.load(result.model_path)
    assert rm.tokenizer.chat_template == ENCODER_CHAT_TEMPLATE
    probe = [ideal_response(p) for p in prompts[:8]]
    torch.testing.assert_close(rm.raw_score([p.text for p in prompts[:8]], probe),
                               result.reward_model.raw_score([p.text for p in prompts[:8]], probe))
    rm.max_length = 32
    long_prompt = " ".join([prompts[0].text] * 10)
    with pytest.warns(TrimmedWarning):
        scores = rm.raw_score([long_prompt] * 2, ["We will refund you today, sorry for the trouble.", "No."])
    assert scores[0] != scores[1]
    best = best_of_n([p.text for p in prompts[:2]], model="sandbox", reward=rm, n=2,
                     settings=SamplingSettings(max_new_tokens=8))
    assert len(best.scores) == 2


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["merged", "4bit-reference-adapter"])
def test_ppo_from_an_sft_adapter_critic_sees_the_sft_model_without_dropout(load_in_4bit: bool,
                                                                          tmp_path: Path) -> None:
    """An SFT model saved as a LoRA adapter (with dropout 0.3): unquantized, PPO merges it into the base (the
    reference and the critic are the SFT model); on a 4-bit base it stays a frozen reference adapter, the critic
    runs on it, and PPO's copies have dropout 0 — so the first update is exact under activation checkpointing."""
    from rlhf_widgets import ModelConfig, SFTStageConfig, train_sft
    from rlhf_widgets.sandbox import gold_reward, make_prompts
    from rlhf_widgets.stages.ppo.backbone import REFERENCE, VALUE

    prompts = [p.text for p in make_prompts(4, seed=1)]
    sft = train_sft(config=SFTStageConfig(output_dir=str(tmp_path / "sft"), sandbox_demos=32, max_steps=2,
                                          learning_rate=1e-3),
                    model=ModelConfig(use_peft=True, load_in_4bit=load_in_4bit, lora_r=4, lora_dropout=0.3))
    adapter = sft.model_path if load_in_4bit else tmp_path / "sft" / "adapter"
    config = PPOConfig(output_dir=str(tmp_path / "ppo"), num_updates=1, batch_size=4, mini_batch_size=4,
                       num_ppo_epochs=1, max_new_tokens=8, sample_every=0, mixed_precision="no")
    settings = ModelConfig(model_name_or_path=str(adapter), use_peft=True, load_in_4bit=load_in_4bit)
    trainer = PPOTrainer(prompts, config, model=settings, reward=gold_reward)
    backend = trainer.backend
    assert backend.has_reference_adapter == load_in_4bit
    if load_in_4bit:
        assert backend.checkpointing and backend.value_adapters == [REFERENCE, VALUE]
        assert all(c.lora_dropout == 0.0 for c in backend.peft.peft_config.values())
    else:  # the reference is the merged SFT model: the same logits as the SFT model saved merged
        merged, tokenizer = load_causal_lm(sft.model_path)
        batch = tokenizer(prompts, padding=True, return_tensors="pt")
        position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            expected = merged(**batch, position_ids=position_ids).logits
        got = backend.reference_logits(batch["input_ids"], batch["attention_mask"], position_ids)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    first = trainer.step()
    assert abs(first["objective/kl"]) < 1e-3 and first["val/ratio"] == pytest.approx(1.0, abs=1e-4)
