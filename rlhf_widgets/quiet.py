"""Quiet by default: library output that tells a user nothing they can act on is filtered where it starts.

Each filter is scoped to one message from one source, never to a whole category or library:
- bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community …" when it is imported on a CPU
  with AVX512-BF16 and the optional `kernels` package is absent; it then uses its own kernels. A filter on that
  logger (`bitsandbytes.backends.cpu.ops`) drops that one line.
- transformers 5 warns that `is_gradient_checkpointing` / `gradient_checkpointing_enable` are deprecated when
  PEFT or TRL call the old names (PEFT's `get_peft_model` does, on every LoRA model): a FutureWarning about code
  inside those libraries. Ignored for those two messages, from `transformers.modeling_utils` only.
- `kernels` (a dependency of transformers since 5.25) logs "Skipping publisher trust check for
  'kernels-community/quantization-bitsandbytes' because Hugging Face Hub is in offline mode" each time bitsandbytes
  looks for its CPU kernel offline (every notebook's first cell under HF_HUB_OFFLINE): nothing a user asked for or can
  act on. A filter on its logger (`kernels._internals.hf_hub`) drops that one line.
- DeepSpeed, when installed, logs "Setting accelerator to CPU…" as accelerate imports it on a machine without a
  GPU; a filter on its logger (`DeepSpeed`) drops that line.
- In a notebook, transformers' trainers print every logged dict under a progress bar (`ProgressCallback`), or
  without one (`PrinterCallback`, when `disable_tqdm`), or draw a table of them (`NotebookProgressCallback`),
  under the live plot that already shows those numbers: `quiet_trainer` leaves only the bar.

`install()` runs when the package is imported (before bitsandbytes can be), and is idempotent.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import warnings
from typing import Any

LIBRARY_LOG_NOISE = {
    "bitsandbytes.backends.cpu.ops": re.compile(r"Failed to load CPU gemm_4bit_forward from kernels-community"),
    "DeepSpeed": re.compile(r"Setting accelerator to CPU"),
    "kernels._internals.hf_hub": re.compile(r"Skipping publisher trust check for 'kernels-community/"),
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
    """In a notebook (an IPython kernel), replace `trainer`'s printed logs or table of logged values by a bare
    progress bar (the live plot shows those values); elsewhere leave its output as it is. Returns `trainer`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    if not _in_kernel():
        return trainer
    for noisy in (NotebookProgressCallback, ProgressCallback, PrinterCallback):
        if any(type(cb) is noisy for cb in trainer.callback_handler.callbacks):
            trainer.remove_callback(noisy)
            if noisy is not PrinterCallback:  # (the printer stands in for a bar the user turned off)
                trainer.add_callback(_bar_only())
    return trainer


def _in_kernel() -> bool:
    """Running in a Jupyter kernel (a notebook), not a terminal or a script."""
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    return shell is not None and getattr(shell, "kernel", None) is not None


@functools.cache
def _bar_only() -> type:
    """transformers' `ProgressCallback` without the lines of logged values under the bar (built on first use:
    importing the package must not import transformers)."""
    from transformers.trainer_callback import ProgressCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            return None

    return BarOnly
