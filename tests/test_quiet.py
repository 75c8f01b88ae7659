"""Library noise is dropped at its source, one message at a time; everything else still shows."""

import logging
import warnings

from rlhf_widgets import quiet


def test_library_log_noise_is_dropped_and_other_records_kept(caplog) -> None:
    quiet.install()
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    deepspeed = logging.getLogger("DeepSpeed")
    kernels = logging.getLogger("kernels._internals.hf_hub")
    with caplog.at_level(logging.WARNING):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure …", "x")
        deepspeed.warning("Setting accelerator to CPU. If you have GPU or other accelerator, …")
        kernels.warning("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because "
                        "Hugging Face Hub is in offline mode.")
        bnb.warning("4-bit weights on CPU need widths that are multiples of 64")
    assert [r.getMessage() for r in caplog.records] == ["4-bit weights on CPU need widths that are multiples of 64"]


def test_only_the_named_deprecations_from_transformers_are_ignored() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet._installed = False
        quiet.install()  # on top of "always": the filters are the newest, so they win
        message = "`is_gradient_checkpointing` is deprecated and will be removed in v6."
        warnings.warn_explicit(message, FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit(message, FutureWarning, "mine.py", 1, module="my_package.mine")
        warnings.warn_explicit("something else is deprecated", FutureWarning, "modeling_utils.py", 2,
                               module="transformers.modeling_utils")
    assert [(str(w.message), w.filename) for w in caught] == [
        (message, "mine.py"), ("something else is deprecated", "modeling_utils.py")]
