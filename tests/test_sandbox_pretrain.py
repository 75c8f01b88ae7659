"""The sandbox tokenizer, the pretraining script and the committed base checkpoint."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, LlamaForCausalLM

from rlhf_widgets.sandbox import (
    EOS_TOKEN,
    GOLD_WEIGHTS,
    PAD_TOKEN,
    base_model_path,
    build_base_model,
    gold_features,
    make_prompts,
    random_response,
)
from rlhf_widgets.sandbox.gold import split_sentences
from rlhf_widgets.sandbox.pretrain import batch_encoding, dialogue_texts, main, model_config

TINY = {"steps": 6, "batch_size": 4, "seq_len": 64}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_base_model(tmp_path_factory.mktemp("tiny_base"), **TINY)


@pytest.fixture(scope="module")
def base_tokenizer():
    return AutoTokenizer.from_pretrained(base_model_path())


def _eval_loss(model: LlamaForCausalLM, tokenizer) -> float:
    batch = batch_encoding(tokenizer, dialogue_texts(tokenizer, 16, seed=99), seq_len=128)
    with torch.no_grad():
        return model(**batch).loss.item()


# --- pretraining script ----------------------------------------------------------------------------


def test_pretraining_saves_a_loadable_model_whose_loss_dropped(tiny_run: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "pretrain.json",
    ):
        assert (tiny_run / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(tiny_run)
    trained = AutoModelForCausalLM.from_pretrained(tiny_run)
    torch.manual_seed(0)  # the run's seed: same initial weights
    untrained = LlamaForCausalLM(model_config(tokenizer)).eval()
    assert _eval_loss(trained, tokenizer) < _eval_loss(untrained, tokenizer) - 0.3
    log = json.loads((tiny_run / "pretrain.json").read_text())
    assert log["args"]["steps"] == TINY["steps"] and log["loss_last_50"] < log["loss_first"]


def test_pretraining_is_reproducible_from_the_cli(tiny_run: Path, tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--steps", "6", "--batch-size", "4", "--seq-len", "64"]
    main(args)
    again, first = load_file(tmp_path / "model.safetensors"), load_file(tiny_run / "model.safetensors")
    assert again.keys() == first.keys()
    assert all(torch.equal(again[k], first[k]) for k in first)


def test_pretraining_rows_are_whole_chat_dialogues(base_tokenizer) -> None:
    texts = dialogue_texts(base_tokenizer, 4, seed=1)
    assert all(t.startswith("<|user|>\n") and t.endswith(EOS_TOKEN) and "<|assistant|>\n" in t for t in texts)
    batch = batch_encoding(base_tokenizer, texts, seq_len=128)
    assert (batch["input_ids"][:, 0] == base_tokenizer.convert_tokens_to_ids("<|user|>")).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


# --- tokenizer -------------------------------------------------------------------------------------


def test_tokenizer_round_trips_text_exactly(base_tokenizer) -> None:
    rng = random.Random(0)
    texts = [random_response(p, rng) for p in make_prompts(50, split="test")]
    texts += ["  odd   spacing\tand\nnewlines, é ü 中文, #00012 ", "Thanks!!! #48213#48213"]
    for text in texts:
        assert base_tokenizer.decode(base_tokenizer(text)["input_ids"]) == text


def test_tokenizer_special_tokens_and_padding(base_tokenizer) -> None:
    assert base_tokenizer.pad_token == PAD_TOKEN and base_tokenizer.eos_token == EOS_TOKEN
    assert base_tokenizer.pad_token_id != base_tokenizer.eos_token_id
    assert base_tokenizer.padding_side == "left"
    assert len(base_tokenizer) % 64 == 0
    assert len(base_tokenizer("#48213")["input_ids"]) == 6  # one token per digit, so numbers can be copied


def test_chat_template_ends_every_turn_with_eos(base_tokenizer) -> None:
    chat = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Where is my order #12345?"},
        {"role": "assistant", "content": "Check your tracking number."},
    ]
    text = base_tokenizer.apply_chat_template(chat, tokenize=False)
    assert text.count(EOS_TOKEN) == 3 and text.endswith(f"Check your tracking number.{EOS_TOKEN}")
    prompt = base_tokenizer.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n") and text.startswith(prompt)
    ids = base_tokenizer.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    answer = [i for i, m in zip(ids["input_ids"], ids["assistant_masks"], strict=True) if m]
    assert base_tokenizer.decode(answer) == f"Check your tracking number.{EOS_TOKEN}"


# --- the committed checkpoint ----------------------------------------------------------------------


def test_committed_checkpoint_has_the_documented_shape() -> None:
    model = AutoModelForCausalLM.from_pretrained(base_model_path())
    config = model.config
    assert isinstance(model, LlamaForCausalLM) and config.tie_word_embeddings
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (256, 4, 4)
    widths = (config.hidden_size, config.intermediate_size, config.vocab_size, config.head_dim)
    assert all(w % 64 == 0 for w in widths)
    assert config.max_position_embeddings >= 256
    assert 3e6 < model.num_parameters() < 5e6
    assert model.generation_config.eos_token_id == config.eos_token_id != config.pad_token_id


def test_committed_checkpoint_samples_fluent_responses_that_stop(base_tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(base_model_path())
    prompts = make_prompts(64, seed=3, split="test")  # ~11% of pretraining responses exceed 64 tokens
    chats = [p.messages for p in prompts]
    batch = base_tokenizer.apply_chat_template(
        chats, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
    )
    torch.manual_seed(0)
    out = model.generate(**batch, max_new_tokens=64, do_sample=True, top_k=0, temperature=1.0)
    completions = out[:, batch["input_ids"].shape[1] :]
    stopped = (completions == base_tokenizer.eos_token_id).any(dim=1).float().mean().item()
    assert stopped >= 0.8
    texts = base_tokenizer.batch_decode(completions, skip_special_tokens=True)
    sentences = [s for t in texts for s in split_sentences(t)]
    unmatched = sum(gold_features(p, t)["unmatched"] for p, t in zip(prompts, texts, strict=True))
    assert unmatched / GOLD_WEIGHTS["unmatched"] <= 0.1 * len(sentences)
    assert len(set(texts)) >= 0.8 * len(texts)


def test_committed_checkpoint_loads_in_4bit_on_cpu(base_tokenizer) -> None:
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_model_path(), quantization_config=quantization, device_map="cpu"
    )
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    batch = base_tokenizer.apply_chat_template(
        [make_prompts(1)[0].messages], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > batch["input_ids"].shape[1]
