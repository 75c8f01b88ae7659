"""Shared fixtures. Everything is local: the hub is switched off for the whole suite."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# `make test` runs the suite in TEST_WORKERS processes (pytest-xdist): each takes its share of the cores for
# torch's (and its notebook kernels' and launched workers') threads, so 2 processes on 2 cores don't fight over 4
TEST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if TEST_WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // TEST_WORKERS)))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

if TEST_WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

pytest_plugins = ["families", "pg_fixtures"]  # model-family checkpoints; a PostgreSQL server

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


LONGEST_FIRST = ("test_ppo_sandbox.py", "test_failure_modes.py", "test_loop.py", "test_notebooks.py",
                 "test_alternatives.py", "test_notebook_failure_modes.py", "test_ppo_distributed.py",
                 "test_ppo_faults.py", "test_notebook_iterative.py", "test_browser_loop.py", "test_install.py",
                 "test_browser_ppo.py", "test_browser_labeling.py")
"""Test modules that take longest, longest first: 30 s to 14 min of one core each on the float32 path
(`pytest --durations`, docs/PERFORMANCE.md "Suite time"). `make test` hands whole modules to its processes
(`--dist loadfile`: a module's fixtures are built once) in collection order, so these go first and the short
ones fill in around them; a module not listed keeps its place after them."""


SANDBOX_CHAIN_MODULES = ("test_ppo_sandbox.py", "test_loop.py", "test_reward.py", "test_alternatives.py",
                         "test_stages.py", "test_notebook_iterative.py", "test_sft.py")
"""Modules that use the session's sandbox chain (`sft_model_dir` → `sft_pair_rows` → `trained_reward` /
`biased_reward`: minutes to build; the SFT model alone 1.5 min of one core on the float32 path): `make test` runs
them in one process, which builds the chain once — about 22 min of one core on the float32 path, the other process
takes the rest (docs/PERFORMANCE.md, "Suite time")."""


@pytest.hookimpl(optionalhook=True)  # `-p no:xdist` runs the suite without the hook's plugin
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, except that the sandbox chain's modules are one unit of work (`SANDBOX_CHAIN_MODULES`)."""
    from xdist.scheduler import LoadFileScheduling

    class ModulesAndTheChain(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "the sandbox chain" if module.rsplit("/", 1)[-1] in SANDBOX_CHAIN_MODULES else module

    return ModulesAndTheChain(config, log)


@pytest.hookimpl(trylast=True)  # after pytest's own reordering, whose module order this changes
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module's order is kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def pretend_cpu_bf16(monkeypatch: pytest.MonkeyPatch):
    """`pretend_cpu_bf16(True)` makes this CPU one that computes bf16 natively (AVX512-BF16), `(False)` one that
    does not; the workbench's float32 switch (`RLHF_WIDGETS_CPU_BF16`), which would mask either, is cleared."""
    from rlhf_widgets.runtime.precision import CPU_BF16_ENV

    monkeypatch.delenv(CPU_BF16_ENV, raising=False)

    def pretend(native: bool) -> None:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": native, "amx_bf16": False})

    return pretend


def build_hub_like_model(path: Path, hidden: int = 64) -> Path:
    """A tiny random Llama + byte-level BPE tokenizer saved like a hub checkpoint: EOS '</s>', no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["hello there, how can I help you today?", "my order has not arrived"] * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hub_like_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hub_like_model(tmp_path_factory.mktemp("hub_like_model"))


# ---------------------------------------------------------------- sandbox stages, trained once per session
SFT_DEMOS = 2048


def sandbox_prompts(n: int, seed: int, split: str = "train") -> list[str]:
    from rlhf_widgets.sandbox import make_prompts

    return [p.text for p in make_prompts(n, seed=seed, split=split)]


def label_rows(rows: list[dict], labeler):
    """Pairs labeled by `labeler(prompt, a, b)` → a TRL conversational preference Dataset."""
    import datasets

    out = []
    for row in rows:
        choice = labeler(row["prompt"], row["response_a"], row["response_b"])
        chosen, rejected = ((row["response_a"], row["response_b"]) if choice == "a"
                            else (row["response_b"], row["response_a"]))
        out.append({"prompt": [{"role": "user", "content": row["prompt"]}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}]})
    return datasets.Dataset.from_list(out)


@pytest.fixture(scope="session")
def sft_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlhf_widgets.stages.sft import SFTStageConfig, train_sft

    out = tmp_path_factory.mktemp("sft")
    return train_sft(config=SFTStageConfig(output_dir=str(out), sandbox_demos=SFT_DEMOS)).model_path


@pytest.fixture(scope="session")
def sft_ranked_pair_rows(sft_model_dir: Path) -> list[dict]:
    """All pairs (up to 6) among 4 SFT answers per prompt, on 600 prompts (the quickstart's pairs stage)."""
    from rlhf_widgets.labeling.pairs import generate_pairs

    return generate_pairs(sandbox_prompts(600, seed=11), model=sft_model_dir, k=4, max_pairs_per_prompt=6, seed=3,
                          show_progress=False)


@pytest.fixture(scope="session")
def sft_pair_rows(sft_ranked_pair_rows: list[dict]) -> list[dict]:
    """One pair per prompt: the first of each prompt's pairs."""
    seen: set[str] = set()
    return [row for row in sft_ranked_pair_rows if not (row["prompt"] in seen or seen.add(row["prompt"]))]


@pytest.fixture(scope="session")
def trained_reward(sft_model_dir: Path, sft_ranked_pair_rows: list[dict], tmp_path_factory: pytest.TempPathFactory):
    """A reward model trained on simulated-annotator labels (noise on) of all pairs among 4 SFT answers per prompt."""
    from rlhf_widgets.sandbox import SimulatedAnnotator
    from rlhf_widgets.stages.reward.model import RewardStageConfig, train_reward_model

    pairs = label_rows(sft_ranked_pair_rows, SimulatedAnnotator(temperature=1.0, seed=0))
    out = tmp_path_factory.mktemp("reward")
    return train_reward_model(pairs, RewardStageConfig(output_dir=str(out)), model=sft_model_dir)


@pytest.fixture(scope="session")
def biased_reward(sft_model_dir: Path, sft_pair_rows: list[dict], tmp_path_factory: pytest.TempPathFactory):
    """A reward model trained on a verbosity-biased annotator's labels: a flawed proxy on purpose."""
    from rlhf_widgets.sandbox import SimulatedAnnotator
    from rlhf_widgets.stages.reward.model import RewardStageConfig, train_reward_model

    pairs = label_rows(sft_pair_rows, SimulatedAnnotator(temperature=0.5, verbosity_bias=0.6, seed=0))
    out = tmp_path_factory.mktemp("reward_biased")
    return train_reward_model(pairs, RewardStageConfig(output_dir=str(out), num_train_epochs=2, eval_fraction=0.2),
                              model=sft_model_dir)
