"""What one row holds: the preference row formats and their conversion to TRL's conversational format, and the
prompt a row of a prompt source holds.

A preference pair comes out as three columns, each a list of `{"role", "content"}` messages (TRL's
conversational preference format):

    prompt    the conversation so far (system / user / assistant turns, ending where the answer starts)
    chosen    [{"role": "assistant", "content": <the preferred answer>}]
    rejected  [{"role": "assistant", "content": <the other answer>}]

Preference row formats recognised (`ROW_FORMATS`, detected per row):

    standard         prompt, chosen, rejected are strings
    implicit_prompt  chosen, rejected are strings that start with the same prompt text
    conversational   any of prompt / chosen / rejected is a message list; a missing prompt is the
                     messages chosen and rejected share; a string prompt becomes one user message
    hh_rlhf          Anthropic HH-RLHF transcripts ("\\n\\nHuman: …\\n\\nAssistant: …"); everything
                     before the final Assistant turn is the prompt

Where chosen and rejected hold whole conversations that part before their last turn, the prompt is
TRL's `extract_prompt` rule — the longest run of leading messages they share — provided both go on
with an assistant message there; those two assistant messages are the pair, and any later turns
(answers to conversations that are no longer the same) are dropped and the row is listed in
`LoadReport.shortened`. Conversations that part at a user turn have no differing answer to one
shared prompt and are malformed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

import datasets

from rlhf_widgets.runtime.data.errors import _Malformed
from rlhf_widgets.runtime.data.messages import as_messages
from rlhf_widgets.runtime.types import Messages, Prompt

RowFormat: TypeAlias = Literal["standard", "implicit_prompt", "conversational", "hh_rlhf"]
ROW_FORMATS: tuple[RowFormat, ...] = ("standard", "implicit_prompt", "conversational", "hh_rlhf")
ROLES = ("system", "user", "assistant")
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
PROMPT_FIELDS = ("prompt", "messages", "question", "instruction", "query")
"""the fields `load_prompts` reads a prompt from, first present wins (preference rows aside; see there)"""
_MESSAGES = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
PREFERENCE_FEATURES = datasets.Features({column: _MESSAGES for column in PREFERENCE_COLUMNS})
"""the features of every dataset `load_preferences` returns (before any `keep_columns`)"""

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_ASSISTANT = "\n\nAssistant:"
_NO_SHARED_PROMPT = "is missing, and 'chosen' and 'rejected' share no leading {} to take it from"


def _parse_row(
    row: Any, expected: RowFormat | Literal["auto"], answers_required: bool = True
) -> tuple[RowFormat, tuple[dict[str, Messages], bool]]:
    """(detected format, ({"prompt", "chosen", "rejected"} in the output format, whether later turns were
    dropped)) or raises `_Malformed`. With `answers_required=False` (reading prompts only) empty or equal
    answers are let through."""
    if isinstance(row, _Malformed):
        raise row
    if not isinstance(row, Mapping):
        raise _Malformed(None, f"not a mapping of fields (got {type(row).__name__})")
    prompt, chosen, rejected = (row.get(field) for field in PREFERENCE_COLUMNS)
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None:
            raise _Malformed(field, "is missing")
        if answers_required and (isinstance(value, str) and not value.strip() or isinstance(value, list) and not value):
            raise _Malformed(field, "is empty")
    for field, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if value is not None and not isinstance(value, (str, list)):
            raise _Malformed(field, f"must be a string or a list of messages, got {type(value).__name__}")
    if answers_required and chosen == rejected:
        raise _Malformed("rejected", "is identical to 'chosen'")

    detected = _detect_format(prompt, chosen, rejected)
    if expected != "auto" and detected != expected:
        raise _Malformed(None, f"in {detected} format, not {expected} (format={expected!r})")
    shortened = False
    if detected == "standard":
        prompt_messages, chosen_text, rejected_text = as_messages(prompt), chosen, rejected
    elif detected == "implicit_prompt":
        prompt_messages, chosen_text, rejected_text = _split_implicit_prompt(chosen, rejected)
    elif detected == "conversational":
        prompt_messages, chosen_text, rejected_text, shortened = _split_conversation(prompt, chosen, rejected)
    elif prompt is None:  # hh_rlhf: whole transcripts in chosen / rejected
        prompt_messages, chosen_text, rejected_text, shortened = _split_conversation(
            None, _transcript_messages(chosen), _transcript_messages(rejected)
        )
    else:  # hh_rlhf: the transcript up to "\n\nAssistant:" in prompt, bare answers in chosen / rejected
        prompt_messages = _transcript_messages(prompt)
        if prompt_messages[-1] == {"role": "assistant", "content": ""}:
            prompt_messages.pop()
        chosen_text, rejected_text = chosen.strip(), rejected.strip()

    if not any(message["content"].strip() for message in prompt_messages):
        raise _Malformed("prompt", "is empty")
    if answers_required:
        for field, text in (("chosen", chosen_text), ("rejected", rejected_text)):
            if not text.strip():
                raise _Malformed(field, "is empty")
        if chosen_text == rejected_text:
            raise _Malformed("rejected", "is identical to 'chosen'")
    pair = {
        "prompt": prompt_messages,
        "chosen": [{"role": "assistant", "content": chosen_text}],
        "rejected": [{"role": "assistant", "content": rejected_text}],
    }
    return detected, (pair, shortened)


def _detect_format(prompt: str | list | None, chosen: str | list, rejected: str | list) -> RowFormat:
    if any(isinstance(value, list) for value in (prompt, chosen, rejected)):
        return "conversational"
    if prompt is None:
        return "hh_rlhf" if _is_transcript(chosen) and _is_transcript(rejected) else "implicit_prompt"
    return "hh_rlhf" if _is_transcript(prompt) else "standard"


def _is_transcript(text: str) -> bool:
    return text.lstrip().startswith("Human:") and _HH_ASSISTANT in text


def _transcript_messages(text: str) -> Messages:
    """"\\n\\nHuman: a\\n\\nAssistant: b" → [user a, assistant b], contents stripped."""
    parts = _HH_TURN.split("\n\n" + text.lstrip())  # ["", "Human", " a", "Assistant", " b", …]
    return [
        {"role": _HH_ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _split_implicit_prompt(chosen: str, rejected: str) -> tuple[Messages, str, str]:
    """Split two strings at the last shared "\\n\\nAssistant:", else after the last shared whitespace."""
    shared = os.path.commonprefix([chosen, rejected])
    marker = shared.rfind(_HH_ASSISTANT)
    if marker >= 0:
        prompt, cut = shared[:marker], marker + len(_HH_ASSISTANT)
    else:
        cut = max((i + 1 for i, char in enumerate(shared) if char.isspace()), default=0)
        prompt = shared[:cut]
    if not prompt.strip():
        raise _Malformed("prompt", _NO_SHARED_PROMPT.format("words"))
    return as_messages(prompt.strip()), chosen[cut:].strip(), rejected[cut:].strip()


def _split_conversation(
    prompt: str | list | None, chosen: str | list, rejected: str | list
) -> tuple[Messages, str, str, bool]:
    """(prompt messages, chosen answer, rejected answer, whether later turns were dropped) of a conversational row.

    chosen / rejected may hold just the answer, or the whole conversation (starting with the prompt, or
    with no prompt given): either way each is completed to a full conversation ending with an assistant
    message. The prompt is the messages the two share (TRL's `extract_prompt`: their longest common
    prefix); the answers are the first messages where they differ, which must be assistant messages.
    """
    prompt_messages = None if prompt is None else _checked_messages("prompt", as_messages(prompt))
    conversations = {}
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(value, str):
            messages = [{"role": "assistant", "content": value}]
        else:
            messages = _checked_messages(field, value)
            if not messages:
                raise _Malformed(field, "is empty")
        if prompt_messages is not None:
            n = len(prompt_messages)
            if not (len(messages) > n and messages[:n] == prompt_messages):
                messages = prompt_messages + messages
        if messages[-1]["role"] != "assistant":
            raise _Malformed(field, f"must end with an assistant message, not a {messages[-1]['role']} one")
        conversations[field] = messages
    chosen_messages, rejected_messages = conversations["chosen"], conversations["rejected"]
    shared = 0
    while (
        shared < min(len(chosen_messages), len(rejected_messages))
        and chosen_messages[shared] == rejected_messages[shared]
    ):
        shared += 1
    if shared == len(chosen_messages) == len(rejected_messages):
        raise _Malformed("rejected", "is identical to 'chosen'")
    parts_at_answers = (
        shared < min(len(chosen_messages), len(rejected_messages))
        and chosen_messages[shared]["role"] == rejected_messages[shared]["role"] == "assistant"
    )
    if not parts_at_answers or shared == 0:
        if shared == 0 and not (chosen_messages[0]["role"] == rejected_messages[0]["role"] == "user"):
            raise _Malformed("prompt", _NO_SHARED_PROMPT.format("messages"))
        raise _Malformed(
            "rejected",
            f"continues a different conversation than 'chosen' from message {shared} on "
            "(the two may part only at an assistant answer)",
        )
    shortened = len(chosen_messages) > shared + 1 or len(rejected_messages) > shared + 1
    return (
        chosen_messages[:shared],
        chosen_messages[shared]["content"],
        rejected_messages[shared]["content"],
        shortened,
    )


def _checked_messages(field: str, value: list) -> Messages:
    """`value` as {role, content} messages (extra keys dropped), or `_Malformed`."""
    messages = []
    for j, message in enumerate(value):
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise _Malformed(field, f"message {j} is not a {{role, content}} pair of strings")
        if message["role"] not in ROLES:
            raise _Malformed(field, f"message {j} has role {message['role']!r}, not one of {'/'.join(ROLES)}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _row_prompt(row: Any, column: str | None) -> tuple[str, Prompt]:
    """(the field read, the prompt) of one `load_prompts` row, or raises `_Malformed`."""
    if isinstance(row, _Malformed):
        raise row
    if isinstance(row, (str, list)):  # list sources: a bare prompt
        return ("messages" if isinstance(row, list) else "string"), _prompt_value("prompt", row)
    if not isinstance(row, Mapping):
        raise _Malformed(None, f"is not a prompt, a message list or a mapping of fields (got {type(row).__name__})")
    if column is not None:
        if row.get(column) is None:
            raise _Malformed(column, "is missing")
        return column, _prompt_value(column, row[column])
    for field in ("prompt", "messages"):
        if row.get(field) is not None:
            return field, _prompt_value(field, row[field])
    if row.get("chosen") is not None and row.get("rejected") is not None:
        detected, (pair, _) = _parse_row(row, "auto", answers_required=False)
        return f"preference:{detected}", _prompt_value("prompt", pair["prompt"])
    for field in PROMPT_FIELDS[2:]:
        if row.get(field) is not None:
            value = row[field]
            if field == "instruction" and isinstance(row.get("input"), str) and row["input"].strip():
                value = f"{value}\n\n{row['input']}" if isinstance(value, str) else value
            return field, _prompt_value(field, value)
    if "role" in row and "content" in row:
        raise _Malformed(None, "is a single {role, content} message, not a prompt; a conversation is a list of them")
    found = ", ".join(map(repr, row)) or "none"
    raise _Malformed(
        None,
        f"has no prompt field (fields: {found}); load_prompts reads prompt, messages, chosen + rejected, "
        f"{', '.join(PROMPT_FIELDS[2:])} — pass column=<name> to read another",
    )


def _prompt_value(field: str, value: Any) -> Prompt:
    """A field's value as a prompt: a string stays a string (an HH transcript becomes its turns); a message
    list is cut after its last user turn, and a lone user message becomes its text."""
    if isinstance(value, str):
        if not value.strip():
            raise _Malformed(field, "is empty")
        if not _is_transcript(value):
            return value
        messages = _transcript_messages(value)
    elif isinstance(value, list):
        if not value:
            raise _Malformed(field, "is empty")
        messages = _checked_messages(field, value)
    else:
        raise _Malformed(field, f"must be a string or a list of messages, got {type(value).__name__}")
    last_user = max((i for i, message in enumerate(messages) if message["role"] == "user"), default=None)
    if last_user is None:
        raise _Malformed(field, "has no user message")
    messages = messages[: last_user + 1]
    if not messages[-1]["content"].strip():
        raise _Malformed(field, "ends with an empty user message")
    if len(messages) == 1:
        return messages[0]["content"]
    return messages
