"""Prompts and preference pairs in, from every common source and format; preference pairs out.

`load_prompts` reads the prompts a policy is sampled on (PPO, GRPO, best-of-N, evaluation, candidate
pairs) and returns a list of prompts, each a string (one user turn) or a list of `{"role", "content"}`
messages ending with a user turn. It reads lists, files, datasets, hub ids, and `"sandbox"`.

`load_preferences` reads preference pairs in any of the row formats of `formats` and returns a
`datasets.Dataset` with exactly three columns, `prompt`, `chosen` and `rejected`, each a list of
`{"role", "content"}` messages (TRL's conversational preference format). `save_preferences` writes
.jsonl / .jsonl.gz / .parquet files that `load_preferences` reads back identically. Malformed rows
are skipped with one warning, skipped silently, or raised (`on_error`, see `errors`). `data_file(name)`
is the path of one of the project's small example files (`data/`), wherever the package is installed.

    messages.py  message helpers: a prompt as messages, the last user turn, a response's text, words
    errors.py    malformed rows: the error types, LoadReport, the on_error policy
    formats.py   one row: the preference row formats → TRL's conversational format; a row's prompt
    sources.py   rows from files, directories, datasets, lists and hub ids; data_file
    readers.py   load_preferences, load_prompts (the sandbox's prompts included), prompt_list
    writer.py    save_preferences
    pairs.py     loaded pairs: SFT demonstrations, a split by prompt, one pair per prompt

Every name other modules use is importable from here (`from rlhf_widgets.runtime.data import …`).
"""

from __future__ import annotations

from rlhf_widgets.runtime import quiet
from rlhf_widgets.runtime.data.errors import (
    DataRowError,
    DataWarning,
    LoadReport,
    OnError,
    PreferenceDataError,
    PromptDataError,
    RowProblem,
)
from rlhf_widgets.runtime.data.formats import (
    PREFERENCE_COLUMNS,
    PREFERENCE_FEATURES,
    PROMPT_FIELDS,
    ROLES,
    ROW_FORMATS,
    RowFormat,
)
from rlhf_widgets.runtime.data.messages import as_messages, last_user_content, message_text, words
from rlhf_widgets.runtime.data.pairs import demonstrations, one_pair_per_prompt, split_by_prompt
from rlhf_widgets.runtime.data.readers import SANDBOX_PROMPTS, load_preferences, load_prompts, prompt_list
from rlhf_widgets.runtime.data.sources import PreferenceSource, PromptSource, data_file
from rlhf_widgets.runtime.data.writer import save_preferences
from rlhf_widgets.runtime.types import SANDBOX, Messages, Prompt

quiet.quiet_libraries()  # datasets' map / load bars off (quiet.py)

__all__ = [
    "PREFERENCE_COLUMNS",
    "PREFERENCE_FEATURES",
    "PROMPT_FIELDS",
    "ROLES",
    "ROW_FORMATS",
    "SANDBOX",
    "SANDBOX_PROMPTS",
    "DataRowError",
    "DataWarning",
    "LoadReport",
    "Messages",
    "OnError",
    "PreferenceDataError",
    "PreferenceSource",
    "Prompt",
    "PromptDataError",
    "PromptSource",
    "RowFormat",
    "RowProblem",
    "as_messages",
    "data_file",
    "demonstrations",
    "last_user_content",
    "load_preferences",
    "load_prompts",
    "message_text",
    "one_pair_per_prompt",
    "prompt_list",
    "save_preferences",
    "split_by_prompt",
    "words",
]
