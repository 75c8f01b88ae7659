import json
import logging
import math
import threading
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from rlhf_widgets.runtime.callbacks import MetricsCallback
from rlhf_widgets.runtime.metrics import Event, MetricRecord, MetricsLog, SampleBatch


def _strict_json(line: str) -> dict:
    """json.loads that refuses NaN / Infinity literals (they are not JSON)."""
    def refuse(name: str) -> None:
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


def test_accessors_return_what_was_logged() -> None:
    log = MetricsLog()
    log.log({"objective/kl": 0.5, "loss": 2.0}, step=1, stage="ppo")
    log.log({"objective/kl": 0.25}, step=2, stage="ppo")
    log.log({"loss": 1.0, "grad_norm": torch.tensor(3.0)}, step=3)
    assert log.path is None
    assert [r.step for r in log.records] == [1, 2, 3]
    assert log.records[0].stage == "ppo" and log.records[2].stage is None
    assert log.series("objective/kl") == ([1, 2], [0.5, 0.25])
    assert log.series("loss") == ([1, 3], [2.0, 1.0])
    assert log.series("never") == ([], [])
    assert log.latest("objective/kl") == 0.25 and log.latest("grad_norm") == 3.0
    with pytest.raises(KeyError, match="never"):
        log.latest("never")
    assert log.names() == ["objective/kl", "loss", "grad_norm"]
    df = log.to_dataframe()
    assert list(df.columns) == ["step", "stage", "time", "objective/kl", "loss", "grad_norm"]
    assert df["step"].tolist() == [1, 2, 3]
    assert df["loss"].tolist()[0] == 2.0 and math.isnan(df["loss"].tolist()[1])


def test_rejects_non_numbers_and_reserved_event_kinds() -> None:
    log = MetricsLog()
    with pytest.raises(ValueError, match="'note'.*not a number"):
        log.log({"note": "hello"}, step=0)
    for kind in ("metrics", "samples", "run"):
        with pytest.raises(ValueError, match="reserved"):
            log.log_event(kind, "x", step=0)
    assert log.records == [] and log.events() == []


def test_every_line_is_flushed_strict_json_and_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"
    log = MetricsLog(path, run_name="demo")
    log.log({"loss": math.nan, "up": math.inf, "down": -math.inf, "ok": 1.5}, step=1, stage="sft")
    log.log_event("lr_change", "lr 1e-5 → 5e-6", step=2, stage="sft", old=1e-5, new=torch.tensor(5e-6))
    sample = {"prompt": "Hi", "response": "Hello", "score": torch.tensor(0.5), "kl": math.nan}
    log.log_samples([sample], step=2)
    # read while the log is still alive: nothing waits in a buffer
    lines = [_strict_json(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [line["kind"] for line in lines] == ["run", "metrics", "lr_change", "samples"]
    assert lines[0]["run_name"] == "demo"
    assert lines[1]["metrics"] == {"loss": "NaN", "up": "Infinity", "down": "-Infinity", "ok": 1.5}
    assert lines[2]["data"]["new"] == pytest.approx(5e-6) and lines[3]["rows"][0]["kl"] == "NaN"

    again = MetricsLog.load(path)
    assert again.run_name == "demo" and again.path is None
    (record,) = again.records
    assert (record.step, record.stage) == (1, "sft")
    assert math.isnan(record.metrics["loss"]) and record.metrics["up"] == math.inf
    assert record.metrics["down"] == -math.inf and record.metrics["ok"] == 1.5
    assert record.time == log.records[0].time
    (event,) = again.events()
    assert (event.kind, event.message, event.step, event.stage) == ("lr_change", "lr 1e-5 → 5e-6", 2, "sft")
    assert event.data["old"] == 1e-5
    (batch,) = again.samples()
    assert batch.rows[0]["response"] == "Hello" and batch.rows[0]["score"] == pytest.approx(0.5)


def test_new_log_truncates_and_resume_appends(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    MetricsLog(path).log({"loss": 3.0}, step=1)
    resumed = MetricsLog.load(path, resume=True)
    resumed.log({"loss": 2.0}, step=2)
    assert resumed.path == path and MetricsLog.load(path).series("loss") == ([1, 2], [3.0, 2.0])
    MetricsLog(path).log({"loss": 9.0}, step=1)
    assert MetricsLog.load(path).series("loss") == ([1], [9.0])


def test_half_written_last_line_is_skipped_and_cut_on_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.jsonl"
    MetricsLog(path).log({"loss": 3.0}, step=1)
    with path.open("a", encoding="utf-8") as f:
        f.write('{"kind": "metrics", "step": 2, "met')  # the process died mid-write
    with caplog.at_level(logging.WARNING):
        resumed = MetricsLog.load(path, resume=True)
    assert "half-written" in caplog.text
    resumed.log({"loss": 1.0}, step=3)
    assert MetricsLog.load(path).series("loss") == ([1, 3], [3.0, 1.0])


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "run"}\nnot json\n{"kind": "metrics", "step": 1, "time": 0, "metrics": {}}\n')
    with pytest.raises(ValueError, match=":2: not a JSON line"):
        MetricsLog.load(path)


def test_logged_samples_are_copies() -> None:
    log = MetricsLog()
    row = {"prompt": "p", "response": "r"}
    log.log_samples([row], step=0)
    row["response"] = "changed"
    assert log.samples()[0].rows[0]["response"] == "r"


def test_subscribers_see_every_entry_until_unsubscribed() -> None:
    log = MetricsLog()
    log.log({"a": 1.0}, step=0)
    seen: list = []
    unsubscribe = log.subscribe(seen.append)
    log.log({"a": 2.0}, step=1)
    log.log_event("stop", "stopped: NaN in loss", step=1)
    log.log_samples([{"prompt": "p"}], step=1)
    assert [type(e) for e in seen] == [MetricRecord, Event, SampleBatch]
    unsubscribe()
    log.log({"a": 3.0}, step=2)
    assert len(seen) == 3

    replayed: list = []
    log.subscribe(replayed.append, replay=True)
    assert [e.step for e in replayed] == [0, 1, 1, 1, 2]
    log.log({"a": 4.0}, step=3)
    assert replayed[-1].metrics == {"a": 4.0}


def test_failing_subscriber_warns_once_and_training_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    log = MetricsLog()
    good: list = []

    def broken(entry: object) -> None:
        raise RuntimeError("view crashed")

    log.subscribe(broken)
    log.subscribe(good.append)
    with caplog.at_level(logging.WARNING, logger="rlhf_widgets.runtime.metrics"):
        for step in range(3):
            log.log({"loss": 1.0}, step=step)
    assert len(log.records) == 3 and len(good) == 3
    warnings = [r for r in caplog.records if "subscriber" in r.getMessage()]
    assert len(warnings) == 1 and "view crashed" in caplog.text


def test_concurrent_logging_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    counted: list = []
    log.subscribe(counted.append)

    def worker(offset: int) -> None:
        for i in range(200):
            log.log({"x": float(offset + i)}, step=offset + i)

    threads = [threading.Thread(target=worker, args=(1000 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log.records) == 800 and len(counted) == 800
    lines = [_strict_json(line) for line in path.read_text().splitlines()[1:]]
    assert sorted(line["step"] for line in lines) == sorted(r.step for r in log.records)
    assert len(set(log.series("x")[0])) == 800


# ---- MetricsCallback --------------------------------------------------------------------------


class _TokenDataset(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 32, (n, 8), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_callback_feeds_the_log_from_a_real_trainer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, per_device_eval_batch_size=2,
        logging_steps=1, eval_strategy="steps", eval_steps=3, save_strategy="no", use_cpu=True,
        report_to="none", bf16=False, disable_tqdm=True,
    )
    log = MetricsLog(tmp_path / "metrics.jsonl")
    trainer = Trainer(model=LlamaForCausalLM(config), args=args, train_dataset=_TokenDataset(6),
                      eval_dataset=_TokenDataset(2), callbacks=[MetricsCallback(log, stage="sft")])
    trainer.train()

    assert log.series("loss")[0] == [1, 2, 3]
    assert log.series("eval_loss")[0] == [3]
    assert {"grad_norm", "learning_rate"} <= set(log.names())
    assert all(r.stage == "sft" for r in log.records)
    # one record per trainer log call, holding exactly its numbers
    history = trainer.state.log_history
    assert len(log.records) == len(history)
    for record, logged in zip(log.records, history, strict=True):
        expected = {k: float(v) for k, v in logged.items() if k != "step"}
        assert record.step == logged["step"] and record.metrics == pytest.approx(expected)


@pytest.mark.parametrize("main_process", [True, False])
def test_callback_logs_only_on_the_main_process(tmp_path: Path, main_process: bool) -> None:
    log = MetricsLog()
    callback = MetricsCallback(log, stage="dpo")
    state = TrainerState(global_step=7, is_world_process_zero=main_process)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    callback.on_log(args, state, TrainerControl(), logs={"loss": 0.5, "note": "text", "flag": True})
    if main_process:
        (record,) = log.records
        assert (record.step, record.stage, record.metrics) == (7, "dpo", {"loss": 0.5})
    else:
        assert log.records == []
