"""Quiet by default: library output that tells a user nothing they can act on is filtered where it starts.

Each filter is scoped to one message from one source, never to a whole category or library:
- bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community …" when it is imported on a CPU
  with AVX512-BF16 and the optional `kernels` package is absent; it then uses its own kernels. A filter on that
  logger (`bitsandbytes.backends.cpu.ops`) drops that one line.
- transformers 5 warns that `is_gradient_checkpointing` / `gradient_checkpointing_enable` are deprecated when
  PEFT or TRL call the old names (PEFT's `get_peft_model` does, on every LoRA model): a FutureWarning about code
  inside those libraries. Ignored for those two messages, from `transformers.modeling_utils` only.
- In a notebook, transformers' trainers draw a progress table of the logged losses (`NotebookProgressCallback`)
  under the live plot that already shows them: `quiet_trainer` swaps it for a progress bar.

`install()` runs when the package is imported (before bitsandbytes can be), and is idempotent.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from typing import Any

LIBRARY_LOG_NOISE = {
    "bitsandbytes.backends.cpu.ops": re.compile(r"Failed to load CPU gemm_4bit_forward from kernels-community"),
}
"""logger name → the message it drops"""
LIBRARY_WARNING_NOISE = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
    (FutureWarning, r"`gradient_checkpointing_enable` is deprecated", r"transformers\.modeling_utils"),
)
"""(category, message regex, module regex) of each ignored warning"""


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message matches `pattern`."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


_installed = False


def install() -> None:
    """Install the filters above (once per process)."""
    global _installed
    if _installed:
        return
    for name, pattern in LIBRARY_LOG_NOISE.items():
        logging.getLogger(name).addFilter(_DropMessage(pattern))
    for category, message, module in LIBRARY_WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    _installed = True


def quiet_trainer(trainer: Any) -> Any:
    """In a notebook, replace `trainer`'s table of logged losses by a progress bar (the live plot shows the losses);
    elsewhere leave its output as it is. Returns `trainer`."""
    from transformers.utils.notebook import NotebookProgressCallback

    if any(isinstance(cb, NotebookProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(NotebookProgressCallback)
        trainer.add_callback(_bar_only())
    return trainer


@functools.cache
def _bar_only() -> type:
    """transformers' `ProgressCallback` without the lines of logged values under the bar (built on first use:
    importing the package must not import transformers)."""
    from transformers.trainer_callback import ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            return None

    return BarOnly
