"""Library noise is dropped at its source, one message at a time; everything else still shows; one bar per long
call."""

import logging
import warnings

import pytest

from rlhf_widgets.runtime import quiet


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


def _load_report(missing: set[str]) -> str:
    """transformers' load report for a checkpoint without the `missing` weights, as its loader logs it."""
    from transformers.utils.loading_report import LoadStateDictInfo

    info = LoadStateDictInfo(missing_keys=missing, unexpected_keys=set(), mismatched_keys=set(), error_msgs=[],
                             conversion_errors={}, skipped_pp_keys=set())
    return "\x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: runs/sft/final\n" + \
        info.create_loading_report()


@pytest.fixture
def modeling_utils_records():
    """What transformers' model loader logs, as a list of messages."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.WARNING)  # (the suite runs transformers at "error")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_the_load_report_of_a_head_we_add_is_dropped_and_any_other_kept(modeling_utils_records: list) -> None:
    logger = logging.getLogger("transformers.modeling_utils")
    new_head, broken = _load_report({"score.weight"}), _load_report({"score.weight", "model.norm.weight"})
    with quiet.new_head_expected("score"):
        logger.warning(new_head)
        logger.warning(broken)
        logger.warning("another warning")
    logger.warning(new_head)  # outside the load that adds the head
    assert modeling_utils_records == [broken, "another warning", new_head]


def test_bars_inside_a_long_call_drive_its_one_bar() -> None:
    from tqdm.auto import tqdm

    before = len(tqdm._instances)
    with quiet.long_call("quickstart"), quiet.long_call("2/6 reward model"):
        with quiet.progress(total=3, desc="reward", unit="step") as bar:
            bar.update(3)
        assert len(tqdm._instances) == before + 1
        shared = quiet._local.shared.bar
        assert [list(quiet.progress(range(2), desc="generating"))] == [[0, 1]]
        assert len(tqdm._instances) == before + 1
        assert shared.desc == "quickstart 2/6 reward model · generating" and (shared.n, shared.total) == (2, 2)
    assert len(tqdm._instances) == before  # closed with the call
    outside = quiet.progress(total=1, desc="alone")
    assert type(outside) is tqdm and outside.desc == "alone"
    outside.close()
