"""The model-family fixtures (tests/families.py) are what they claim to be: each loads with the project's
loaders and keeps its family's conventions — chat format, refusals, generation_config, layer layout."""

from __future__ import annotations

import json
from operator import attrgetter
from pathlib import Path

import pytest
import torch
from families import CHAT_FAMILIES, FAMILIES, FAMILY_NAMES, FamilyCheckpoints
from jinja2.exceptions import TemplateError
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, GenerationConfig

from rlhf_widgets.runtime.models import load_causal_lm, load_reward_backbone, load_tokenizer

HI = [{"role": "user", "content": "Hi"}]
HELLO = [{"role": "assistant", "content": "Hello"}]
SYSTEM = [{"role": "system", "content": "Be brief."}]
MIXED_LAYERS = ("qwen2", "qwen3", "gemma2", "gemma3")


def test_every_family_of_the_design_card_is_there() -> None:
    assert set(FAMILY_NAMES) == {"llama3", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "mistral", "gpt2", "gptneox"}
    assert set(CHAT_FAMILIES) == set(FAMILY_NAMES) - {"gpt2", "gptneox"}


def test_checkpoint_loads_with_the_project_loaders(family_name: str, family_dir: Path) -> None:
    family = FAMILIES[family_name]
    model, tokenizer = load_causal_lm(str(family_dir))
    assert model.config.model_type == family.model_type
    assert type(load_tokenizer(family_dir)) is type(tokenizer)
    batch = tokenizer(["Hi there", "My order hasn't arrived yet."], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and logits.shape[-1] >= len(tokenizer)
    assert torch.isfinite(logits).all()


def test_tokenizer_and_generation_config_are_the_familys(family_name: str, family_dir: Path) -> None:
    family = FAMILIES[family_name]
    raw = AutoTokenizer.from_pretrained(family_dir)  # as the checkpoint ships it, before load_tokenizer adds a pad
    assert (raw.bos_token, raw.eos_token, raw.pad_token) == (family.bos, family.eos, family.pad or family.default_pad)
    if family.add_bos:
        assert raw("Hi").input_ids[0] == raw.bos_token_id
    else:
        assert raw.bos_token_id not in raw("Hi").input_ids
    eos_ids = [raw.convert_tokens_to_ids(token) for token in family.generation_eos]
    generation = GenerationConfig.from_pretrained(family_dir)
    assert generation.eos_token_id == (eos_ids if len(eos_ids) > 1 else eos_ids[0])
    for key, value in family.generation.items():
        assert getattr(generation, key) == value, key
    if family.turn_end:  # generation stops at the end of an assistant turn: the turn end is one of the EOS ids
        assert raw.convert_tokens_to_ids(family.turn_end) in eos_ids
    if family.tokenizer_class:
        tokenizer_config = json.loads((family_dir / "tokenizer_config.json").read_text())
        assert tokenizer_config["tokenizer_class"] == family.tokenizer_class


def test_the_conventions_that_trip_stages_up(family_checkpoints: FamilyCheckpoints) -> None:
    """The cases the matrix exists for, read back from the saved files."""
    def files(name: str) -> tuple[dict, dict, dict]:
        path = family_checkpoints.causal_lm(name)
        return tuple(json.loads((path / f).read_text())
                     for f in ("tokenizer_config.json", "generation_config.json", "config.json"))

    tokenizer_config, generation, _ = files("llama3")
    eot = AutoTokenizer.from_pretrained(family_checkpoints.causal_lm("llama3")).convert_tokens_to_ids("<|eot_id|>")
    assert tokenizer_config.get("pad_token") is None and tokenizer_config["eos_token"] == "<|end_of_text|>"
    assert isinstance(generation["eos_token_id"], list) and eot in generation["eos_token_id"]
    for name in ("qwen2", "qwen3"):
        tokenizer_config, generation, config = files(name)
        assert (tokenizer_config["pad_token"], tokenizer_config["eos_token"]) == ("<|endoftext|>", "<|im_end|>")
        assert generation["repetition_penalty"] == 1.1
        assert config["use_sliding_window"] and config["vocab_size"] > len(AutoTokenizer.from_pretrained(
            family_checkpoints.causal_lm(name)))  # the embedding has more rows than the tokenizer has tokens
    tokenizer_config, _, _ = files("phi3")
    assert tokenizer_config["pad_token"] == tokenizer_config["eos_token"] == "<|endoftext|>"  # pad == EOS
    for name in ("gpt2", "gptneox"):
        tokenizer_config, _, _ = files(name)
        assert tokenizer_config.get("chat_template") is None and tokenizer_config.get("pad_token") is None


def test_chat_template_renders_a_user_turn_and_ends_answers_with_the_turn_end(
    family_name: str, family_dir: Path
) -> None:
    family = FAMILIES[family_name]
    tokenizer = load_tokenizer(family_dir)
    rendered = tokenizer.apply_chat_template(HI, add_generation_prompt=True, tokenize=False)
    if family.chat_template is None:  # a base checkpoint gets the documented plain format; answers end with EOS
        assert AutoTokenizer.from_pretrained(family_dir).chat_template is None
        assert rendered == "User: Hi\n\nAssistant:"
    else:
        assert rendered == family.rendered_user_turn
    ids = tokenizer.apply_chat_template(HI + HELLO, tokenize=True, return_dict=False)
    hello = tokenizer.encode("Hello", add_special_tokens=False)
    start = next(i for i in range(len(ids)) if ids[i:i + len(hello)] == hello)
    turn_end = family.turn_end or family.eos
    assert ids[start + len(hello)] == tokenizer.convert_tokens_to_ids(turn_end)  # one token, right after
    # no text fell out of the vocabulary (GPT-2's unknown token is its EOS, which ends the answer)
    assert tokenizer.unk_token_id in (None, tokenizer.eos_token_id) or tokenizer.unk_token_id not in ids


@pytest.mark.parametrize(
    ("name", "messages", "error"),
    [
        ("gemma2", SYSTEM + HI, "System role not supported"),
        ("gemma2", HI + HI, "roles must alternate user/assistant"),
        ("gemma3", HI + HELLO + HELLO, "roles must alternate user/assistant"),
        ("mistral", HI + HI, "roles must alternate user/assistant"),
        ("mistral", HELLO + HI, "roles must alternate user/assistant"),
    ],
)
def test_templates_refuse_what_the_family_refuses(
    family_checkpoints: FamilyCheckpoints, name: str, messages: list[dict], error: str
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(family_checkpoints.causal_lm(name))
    with pytest.raises(TemplateError, match=error):
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize(
    ("name", "rendered"),
    [
        ("gemma3", "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"),
        ("mistral", "<s>[INST] Be brief.\n\nHi [/INST]"),
        ("qwen2", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        ("llama3", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant"
                   "<|end_header_id|>\n\n"),
    ],
)
def test_system_messages_where_the_family_takes_them(
    family_checkpoints: FamilyCheckpoints, name: str, rendered: str
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(family_checkpoints.causal_lm(name))
    assert tokenizer.apply_chat_template(SYSTEM + HI, add_generation_prompt=True, tokenize=False) == rendered


def test_qwen3_thinking_switch_and_history(family_checkpoints: FamilyCheckpoints) -> None:
    tokenizer = AutoTokenizer.from_pretrained(family_checkpoints.causal_lm("qwen3"))
    off = tokenizer.apply_chat_template(HI, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert off == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    history = HI + [{"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello"}] + HI
    assert "hmm" not in tokenizer.apply_chat_template(history, tokenize=False)  # earlier reasoning is dropped


def test_layer_layout(family_name: str, family_dir: Path) -> None:
    family = FAMILIES[family_name]
    model, _ = load_causal_lm(str(family_dir))
    layers, norm = attrgetter(family.layers)(model), attrgetter(family.final_norm)(model)
    assert isinstance(layers, torch.nn.ModuleList) and len(layers) == model.config.num_hidden_layers
    assert isinstance(norm, torch.nn.Module) and not isinstance(norm, torch.nn.ModuleList)
    layer_types = getattr(model.config, "layer_types", None)
    if family_name in MIXED_LAYERS:
        assert len(layers) == 4 and set(layer_types) == {"sliding_attention", "full_attention"}
        assert model.config.sliding_window == 8
    else:
        assert layer_types is None or set(layer_types) == {"full_attention"}


def test_reward_checkpoint_scores_each_text_at_its_own_end(family_name: str, family_reward_dir: Path) -> None:
    model, tokenizer = load_reward_backbone(str(family_reward_dir))
    assert model.config.num_labels == 1 and type(model).__name__.endswith("ForSequenceClassification")
    texts = ["Hi", "My order hasn't arrived yet. What should I do?"]
    with torch.no_grad():
        batch = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        alone = torch.cat([model(**tokenizer([text], return_tensors="pt")).logits for text in texts])
    assert batch.shape == (2, 1)
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-4)  # padding does not move where the score is read


def test_minilm_is_a_real_pretrained_encoder_that_loads_offline(minilm_dir: Path) -> None:
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=1, output_loading_info=True
    )
    assert classifier.config.model_type == "bert" and classifier.config.num_hidden_layers == 6
    assert info["missing_keys"] and all(key.startswith("classifier.") for key in info["missing_keys"])
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    assert tokenizer.chat_template is None
    encoder = AutoModel.from_pretrained(minilm_dir).eval()
    sentences = ["My parcel has not arrived.", "Where is my order? It is late.", "The cat sat on the warm mat."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    related, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert related > unrelated + 0.2  # trained weights: random ones do not rank meaning
