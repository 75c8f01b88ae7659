"""The stage contract: one call shape and one result for every stage, ModelConfig never modified, the CLI for every
stage generated from the config dataclasses, and the public surface."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import label_rows, sandbox_prompts

import rlhf_widgets
from rlhf_widgets import cli
from rlhf_widgets.runtime import quiet
from rlhf_widgets.runtime.config import ModelConfig
from rlhf_widgets.runtime.stage_runner import StageResult
from rlhf_widgets.sandbox import SimulatedAnnotator, gold_reward

STAGES = ("train_sft", "train_reward_model", "train_reward_ensemble", "train_dpo", "train_grpo", "train_rloo",
          "train_ppo")


def test_every_stage_has_the_same_call_shape() -> None:
    for name in STAGES:
        params = inspect.signature(getattr(rlhf_widgets, name)).parameters
        (data, config), rest = list(params.values())[:2], list(params.values())[2:]
        assert data.kind == config.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD, name
        assert config.name == "config" and config.default is None, name
        keyword = {p.name for p in rest if p.kind == inspect.Parameter.KEYWORD_ONLY}
        assert {"model", "metrics"} <= keyword and len(keyword) == len(rest), (name, keyword)


@pytest.fixture(scope="module")
def preference_file(sft_pair_rows, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prefs") / "preferences.jsonl"
    label_rows(sft_pair_rows[:48], SimulatedAnnotator(seed=3)).to_json(str(path))
    return path


def test_no_stage_modifies_the_model_config_and_each_returns_a_loadable_model(
        sft_model_dir: Path, preference_file: Path, tmp_path: Path) -> None:
    from rlhf_widgets import (
        DPOStageConfig,
        GRPOStageConfig,
        PPOConfig,
        RewardModel,
        RewardStageConfig,
        RLOOStageConfig,
        SFTStageConfig,
        load_causal_lm,
        load_preferences,
        train_dpo,
        train_grpo,
        train_ppo,
        train_reward_model,
        train_rloo,
        train_sft,
    )

    settings = ModelConfig(model_name_or_path=str(sft_model_dir), use_peft=True, lora_r=4, lora_alpha=8)
    before = settings.to_dict()
    pairs = load_preferences(preference_file)
    prompts = sandbox_prompts(8, seed=2)
    online = dict(max_steps=1, per_device_train_batch_size=4, num_generations=2, max_completion_length=8)
    reward_config = RewardStageConfig(output_dir=str(tmp_path / "reward"), max_steps=1, eval_fraction=0.25)
    reward_before = vars(reward_config).copy()
    results = [
        train_sft(config=SFTStageConfig(output_dir=str(tmp_path / "sft"), sandbox_demos=8, max_steps=1),
                  model=ModelConfig(use_peft=True, lora_r=4)),
        train_reward_model(pairs, reward_config, model=settings),
        train_dpo(pairs, DPOStageConfig(output_dir=str(tmp_path / "dpo"), max_steps=1), model=settings),
        train_grpo(prompts, GRPOStageConfig(output_dir=str(tmp_path / "grpo"), **online), model=settings,
                   reward=gold_reward),
        train_rloo(prompts, RLOOStageConfig(output_dir=str(tmp_path / "rloo"), **online), model=settings,
                   reward=gold_reward),
        train_ppo(prompts, PPOConfig(output_dir=str(tmp_path / "ppo"), num_updates=1, batch_size=4, mini_batch_size=4,
                                     max_new_tokens=8), model=settings, reward=gold_reward),
    ]
    assert settings.to_dict() == before  # not one field changed, by any stage
    assert vars(reward_config) == reward_before  # the stage adjusts a copy of its config (eval_strategy)
    for result, stage in zip(results, ("sft", "reward", "dpo", "grpo", "rloo", "ppo"), strict=True):
        assert isinstance(result, StageResult) and result.stage == stage
        assert result.model_path == tmp_path / stage / "final" and result.train_seconds > 0
        assert result.status == "finished" and result.metrics.path == tmp_path / stage / "metrics.jsonl"
        assert any(e.kind == "saved" for e in result.metrics.events()), stage
        if stage == "reward":
            scores = RewardModel.load(result.model_path)(["Hi"], ["Hello."])
            assert scores.shape == (1,)
        else:
            load_causal_lm(result.model_path)
    # a LoRA run on an unquantized base keeps the adapter beside the merged model, in every TRL policy stage
    for stage in ("sft", "dpo", "grpo", "rloo"):
        assert (tmp_path / stage / "adapter" / "adapter_config.json").is_file(), stage
        assert (tmp_path / stage / "final" / "model.safetensors").is_file(), stage


def test_cli_help_for_every_stage_shows_every_field() -> None:
    from rlhf_widgets.stages.ppo.config import PPOConfig

    for name, command in cli.COMMANDS.items():
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0, name
        assert command.dataclasses(), name
        # every option of every command (the quickstart's too) says what it does
        options = [a for a in cli.parser(name)._actions if a.option_strings and a.dest != "help"]
        assert {"--json", "--verbose"} <= {o for a in options for o in a.option_strings}, name
        silent = [a.option_strings[0] for a in options if not (a.help or "").strip()]
        assert silent == [], (name, silent)
    ppo = cli.COMMANDS["ppo"].dataclasses()
    assert ppo[0] is PPOConfig and ppo[1] is ModelConfig
    # the module entry point, as `python -m rlhf_widgets` / `accelerate launch -m rlhf_widgets` run it
    out = subprocess.run([sys.executable, "-m", "rlhf_widgets", "ppo", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for field in ("--kl_coef", "--num_ppo_epochs", "--value_layers_fraction", "--lora_r", "--load_in_4bit",
                  "--reward_model"):
        assert field in out, field
    assert "β, the KL penalty coefficient" in out  # help texts come from the dataclass, not a copy
    assert cli.main([]) == 2 and cli.main(["no-such-stage"]) == 2


@pytest.fixture
def verbose_switched_back():
    """Whatever a test's `--verbose` switched on is off again after it."""
    yield
    quiet.set_verbose(False)
    os.environ.pop(quiet.VERBOSE_ENV)


@pytest.fixture
def warnings_shown():
    """transformers at its default log level (warnings shown; the suite runs at "error"), as a user's terminal is."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    yield
    hf_logging.set_verbosity(level)


def assert_terminal_quiet(out: str) -> None:
    """What a CLI run printed (stdout and stderr) holds no library chatter: no logged dicts, no load report of a head
    we add on purpose, no library progress bars (weight loading, dataset maps)."""
    for chatter in ("{'loss'", "LOAD REPORT", "Loading weights", "Writing model shards", "examples/s"):
        assert chatter not in out, chatter


def _printed_summary(out: str) -> dict:
    """The JSON summary the CLI prints last (after the trainer's own log lines)."""
    return json.loads(out[out.rindex("\n{\n") + 1:] if not out.startswith("{\n") else out)


def test_reward_and_dpo_run_from_the_command_line(sft_model_dir: Path, preference_file: Path, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture, warnings_shown: None,
                                                  verbose_switched_back: None) -> None:
    from rlhf_widgets import RewardModel

    common = ["--model_name_or_path", str(sft_model_dir), "--data", str(preference_file), "--max_steps", "2",
              "--logging_steps", "1"]
    # by default: a line a person reads, and no library chatter (the reward model's new score head is no news)
    assert cli.main(["reward", *common, "--output_dir", str(tmp_path / "rm"), "--eval_fraction", "0"]) == 0
    out, err = capfd.readouterr()
    assert_terminal_quiet(out + err)
    final = re.escape(str(tmp_path / "rm" / "final"))
    assert re.fullmatch(rf"reward: finished in \d+ s, model in {final}", out.strip()), out
    assert RewardModel.load(tmp_path / "rm" / "final")(["Hi"], ["Hello."]).shape == (1,)
    # --json: the machine-readable summary, as before; --verbose: the libraries' own output (TRL's logged dicts)
    assert cli.main(["dpo", *common, "--output_dir", str(tmp_path / "dpo"), "--beta", "0.2", "--use_peft",
                     "--lora_r", "4", "--json", "--verbose"]) == 0
    out, err = capfd.readouterr()
    assert "{'loss'" in out + err
    summary = _printed_summary(out)
    assert summary["stage"] == "dpo" and summary["status"] == "finished"
    assert summary["model_path"] == str(tmp_path / "dpo" / "final")
    assert (tmp_path / "dpo" / "adapter" / "adapter_config.json").is_file()  # --use_peft reached the stage
    adapter = json.loads((tmp_path / "dpo" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4


def test_quickstart_prints_a_short_summary(tmp_path: Path, capfd: pytest.CaptureFixture,
                                           warnings_shown: None) -> None:
    """The quickstart in a terminal: what to expect (each stage's precision, the time) before the first stage, one
    line per finished stage, a table, the report's path; `--json` is the machine-readable summary, the plan in it."""
    import torch

    from rlhf_widgets.runtime.precision import resolve_mixed_precision

    sizes = ["--output_dir", str(tmp_path / "qs"), "--stages", "sft", "evaluate", "--sft_demos", "32",
             "--eval_prompts", "4", "--best_of", "1"]
    assert cli.main(["quickstart", *sizes]) == 0
    out, err = capfd.readouterr()
    assert_terminal_quiet(out + err)
    status = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]  # (what a terminal shows of each line)
    assert [line.split(":")[0] for line in status if line.endswith(" s")] == ["SFT", "evaluation"], status
    said = [i for i, line in enumerate(status) if line.startswith(("precision: ", "expect ~", "SFT: "))]
    assert [status[i].split()[0] for i in said] == ["precision:", "expect", "SFT:"], status  # before the first stage
    assert "SFT " in status[said[1]] and "evaluation " in status[said[1]]
    lines = out.strip().splitlines()
    assert lines[1].split()[:2] == ["SFT", "50%"], lines  # the comparison table
    assert lines[-1] == f"report: {(tmp_path / 'qs' / 'report.html').resolve()}"
    assert len(lines) + err.count("\n") <= 12, (lines, status)
    assert cli.main(["quickstart", "--output_dir", str(tmp_path / "qs"), "--stages", "sft", "--sft_demos", "8",
                     "--json"]) == 0
    summary = json.loads(capfd.readouterr().out)
    assert set(summary) == {"seconds", "numbers", "output_dir", "report", "plan"} and set(summary["seconds"]) == {"sft"}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    native = resolve_mixed_precision("auto", device) == "bf16"  # bf16 where the hardware computes it, on this one
    assert summary["plan"]["precision"] == {"sft": "bf16" if native else "float32"}
    assert summary["plan"]["expected_seconds"]["sft"] > 0


def test_public_surface_resolves() -> None:
    import rlhf_widgets.stages.best_of  # noqa: F401 - a submodule imported first must not shadow an exported name
    import rlhf_widgets.stages.reward.report  # noqa: F401

    for name in rlhf_widgets.__all__:
        value = getattr(rlhf_widgets, name)
        assert value is not None and not inspect.ismodule(value), name
    with pytest.raises(AttributeError, match="no_such_name"):
        rlhf_widgets.no_such_name  # noqa: B018


def test_the_quickstart_says_when_its_alarm_rolled_ppo_back(tmp_path: Path) -> None:
    """The PPO stage's line names the gold-free alert and the update the policy went back to; without a rollback it
    is the plain line."""
    from rlhf_widgets.runtime.metrics import MetricsLog
    from rlhf_widgets.workflows.quickstart import QuickstartResult, stage_line

    log = MetricsLog()
    log.log({"objective/kl": 2.5, "objective/scores": 1.25}, step=17, stage="ppo")
    result = QuickstartResult(output_dir=tmp_path, report_path=None, seconds={"ppo": 80.0})
    assert stage_line("ppo", result, {"ppo": log}) == "PPO: KL 2.5, reward 1.25, 80 s"
    log.log_event("rollback", "rolled back to update 10 after …", 17, stage="ppo", alert="off_prompt_answers",
                  alert_update=17, rolled_back_to=10)
    assert stage_line("ppo", result, {"ppo": log}) == (
        "PPO: KL 2.5, reward 1.25; the off_prompt_answers alert at update 17 rolled it back to update 10, 80 s")


def test_the_quickstarts_ppo_rolls_back_on_the_gold_free_alerts_only(tmp_path: Path, monkeypatch) -> None:
    import rlhf_widgets.stages.ppo
    from rlhf_widgets.runtime.monitors import GOLD_FREE_KINDS
    from rlhf_widgets.workflows.quickstart import QuickstartConfig, quickstart_ppo

    made = {}

    class Recorder:
        def __init__(self, prompts, config, **kwargs):
            made.update(config=config, **kwargs)

        def train(self):
            return "trained"

    monkeypatch.setattr(rlhf_widgets.stages.ppo, "PPOTrainer", Recorder)
    assert quickstart_ppo(QuickstartConfig(output_dir=str(tmp_path), ppo_updates=3), tmp_path, "reward") == "trained"
    config = made["config"]
    assert config.on_alert == "rollback" and config.prompt_swap_check and config.num_updates == 3
    assert set(config.alarm_kinds) == set(GOLD_FREE_KINDS) == {"ensemble_disagreement", "conservative_divergence",
                                                               "off_prompt_answers"}
    assert made["gold"] is not None  # logged for the report, never acted on
