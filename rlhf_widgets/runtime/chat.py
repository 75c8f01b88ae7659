"""Chat formats across model families: where a turn ends, which tokens stop a response, and what to do when a
checkpoint has no chat format or its format refuses a conversation.

The families differ (facts, from their checkpoints): the tokenizer's EOS is not always the token that ends an
assistant turn (Llama 3 `<|eot_id|>` vs `<|end_of_text|>`, Gemma `<end_of_turn>` vs `<eos>`, Phi-3 `<|end|>`
vs `<|endoftext|>`), `generation_config.json` may list several EOS ids, some formats reject a system message
(Gemma 2) or insist on strict user/assistant alternation (Mistral, Gemma), and base checkpoints (GPT-2, Pythia)
and encoders (BERT / MiniLM) ship no chat format at all.

- `stop_token_ids`: every id that ends a response — the checkpoint's EOS list, the tokenizer's EOS and the
  chat format's turn end — never the pad id. Generation stops at any of them; PPO scores at the one that ended
  the response.
- `PLAIN_CHAT_TEMPLATE` / `ENCODER_CHAT_TEMPLATE`: the documented plain formats a tokenizer without a chat
  format gets (`models.load_tokenizer` assigns them, saying so once):

      decoder:  "User: {user}\\n\\nAssistant: {answer}<eos>"     (a system message: "System: {text}\\n\\n" first)
      encoder:  "[CLS]user: {user}[SEP]assistant: {answer}[SEP]"

- `fit_messages`: a system message is folded into the first user turn where the format rejects system messages.
- `render`: `apply_chat_template` with `fit_messages` applied and a template refusal turned into a ValueError
  that names the model and the fix.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

PLAIN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if not loop.first %}{{- '\\n\\n' }}{%- endif %}"
    "{{- message['role'] | capitalize + ': ' + message['content'] }}"
    "{%- if message['role'] == 'assistant' %}{{- eos_token }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '\\n\\nAssistant:' }}{%- endif %}"
)
"""The plain format of a decoder without one: "System: …", "User: …", "Assistant: …<eos>" turns, a blank line
apart; the generation prompt ends with "Assistant:" and the answer ends with the tokenizer's EOS."""

ENCODER_CHAT_TEMPLATE = (
    "{{- cls_token }}"
    "{%- for message in messages %}"
    "{%- if not loop.first %}{{- sep_token }}{%- endif %}"
    "{{- message['role'] + ': ' + message['content'] }}"
    "{%- endfor %}"
    "{{- sep_token }}"
)
"""The plain format of an encoder (BERT / DeBERTa / MiniLM-style): "[CLS]role: text[SEP]role: text[SEP]" — the
classifier reads [CLS], so the score sees the whole conversation."""

_PROBE = "zq7xk"  # an answer no template changes, to find what follows it


class ChatFormatWarning(UserWarning):
    """A checkpoint's chat format needed an adjustment (a plain format assigned, a system message folded)."""


def is_encoder_tokenizer(tokenizer: Any) -> bool:
    """An encoder's tokenizer (BERT-style: [CLS] / [SEP], no BOS) rather than a decoder's."""
    return bool(getattr(tokenizer, "cls_token", None) and getattr(tokenizer, "sep_token", None)
                and not getattr(tokenizer, "bos_token", None))


def ensure_chat_template(tokenizer: Any, name: str) -> None:
    """Give a tokenizer without a chat format the plain one (decoder or encoder), saying so once per model."""
    if getattr(tokenizer, "chat_template", None):
        return
    encoder = is_encoder_tokenizer(tokenizer)
    tokenizer.chat_template = ENCODER_CHAT_TEMPLATE if encoder else PLAIN_CHAT_TEMPLATE
    _warn_once(f"{name} has no chat format: using rlhf_widgets' plain "
               f"{'encoder' if encoder else 'decoder'} format (rlhf_widgets.runtime.chat."
               f"{'ENCODER' if encoder else 'PLAIN'}_CHAT_TEMPLATE). To use another, set tokenizer.chat_template "
               "(or save one with the model) before training.")


def turn_end_token(tokenizer: Any) -> str | None:
    """The special token the chat format writes right after an assistant answer (`<|eot_id|>`, `<|im_end|>`,
    `<end_of_turn>`, `<|end|>`, `</s>`, EOS), or None when none follows."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}], tokenize=False)
    after = text[text.rindex(_PROBE) + len(_PROBE):]
    specials = sorted(set(tokenizer.all_special_tokens) | set(tokenizer.added_tokens_encoder), key=len, reverse=True)
    return next((token for token in specials if token and after.startswith(token)), None)


def stop_token_ids(tokenizer: Any, generation_config: Any = None, *, keep_pad: bool = False) -> list[int]:
    """Every token id that ends a response, in order: the checkpoint's `generation_config` EOS id(s), the
    tokenizer's EOS, the chat format's turn end — never the pad id (unless `keep_pad`, to check a pad token)."""
    ids: list[int] = []
    configured = getattr(generation_config, "eos_token_id", None)
    ids.extend(configured if isinstance(configured, Iterable) else [configured])
    ids.append(tokenizer.eos_token_id)
    if getattr(tokenizer, "chat_template", None):
        turn_end = turn_end_token(tokenizer)
        if turn_end is not None:
            ids.append(tokenizer.convert_tokens_to_ids(turn_end))
    pad = None if keep_pad else tokenizer.pad_token_id
    return [i for i in dict.fromkeys(ids) if i is not None and i != pad]


def accepts_system_role(tokenizer: Any) -> bool:
    """Whether the chat format formats a system message (Gemma 2's raises)."""
    from jinja2 import TemplateError

    try:
        tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                      tokenize=False, add_generation_prompt=True)
    except TemplateError:
        return False
    return True


def fit_messages(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """`messages` as the chat format takes them: where it rejects system messages, a leading system message is
    folded into the first user turn (as Gemma 3's and Mistral's own formats do), said once per tokenizer."""
    messages = [dict(m) for m in messages]
    if not messages or messages[0].get("role") != "system" or _accepts_system_role_cached(tokenizer):
        return messages
    system, rest = messages[0], messages[1:]
    _warn_once(f"{_name(tokenizer)}'s chat format rejects system messages: the system message is folded into the "
               "first user turn")
    if rest and rest[0].get("role") == "user":
        rest[0] = {**rest[0], "content": f"{system['content'].strip()}\n\n{rest[0]['content']}"}
        return rest
    return [{"role": "user", "content": system["content"]}, *rest]


def render(tokenizer: Any, messages: Sequence[dict[str, str]], **kwargs: Any) -> Any:
    """`tokenizer.apply_chat_template(fit_messages(...), **kwargs)`; a refusal by the format (e.g. roles that do
    not alternate) raises ValueError naming the model, the format's reason and the conversation's roles."""
    from jinja2 import TemplateError

    fitted = fit_messages(tokenizer, messages)
    try:
        return tokenizer.apply_chat_template(fitted, **kwargs)
    except TemplateError as err:
        roles = " → ".join(m.get("role", "?") for m in fitted)
        raise ValueError(f"{_name(tokenizer)}'s chat format refuses this conversation ({roles}): {err}. Make the "
                         "roles alternate user/assistant, starting with user (merge consecutive turns of one role)."
                         ) from None


_SYSTEM_ROLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> accepts a system message


def _accepts_system_role_cached(tokenizer: Any) -> bool:
    if tokenizer not in _SYSTEM_ROLE:
        _SYSTEM_ROLE[tokenizer] = accepts_system_role(tokenizer)
    return _SYSTEM_ROLE[tokenizer]


def _name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, ChatFormatWarning, stacklevel=3)
