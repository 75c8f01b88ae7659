"""Write the small data files under `data/`, all made from the sandbox world (no third-party text).

    python scripts/make_data.py            # rewrite data/
    python scripts/make_data.py OUT_DIR    # write the same files elsewhere

Every file is a function of the sandbox's seeded generators, so a rerun writes the same bytes (the
Parquet files: the same table). `tests/test_data.py` checks the committed files against a fresh run,
and that each loads with `load_prompts` / `load_preferences`.

- prompts/sandbox_{train,test}.jsonl: `{"prompt": <customer message>}` per line, the first prompts of
  `load_prompts("sandbox", split=...)` (seed 0);
- preferences/*: the same PAIRS pairs in each format `load_preferences` reads. A pair is two sampled
  answers (`random_response`) to one train prompt, the one with the higher gold score chosen; pairs
  whose answers tie on gold or start with the same word are passed over (an implicit prompt is the text
  the two share, so a shared first word would be read as part of the prompt).
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlhf_widgets.evaluation.probes import sandbox_probe_rows
from rlhf_widgets.sandbox import gold_score, make_prompts, random_response

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
TRAIN_PROMPTS = 256
"""prompts in prompts/sandbox_train.jsonl (~25 KB); `load_prompts("sandbox")` makes any number"""
TEST_PROMPTS = 128
"""prompts in prompts/sandbox_test.jsonl (~12 KB)"""
PAIRS = 12
"""preference pairs in each file under preferences/"""
SEED = 0


def sandbox_pairs(n: int = PAIRS, seed: int = SEED) -> list[tuple[str, str, str]]:
    """`n` (prompt, chosen, rejected) triples from the sandbox: gold decides, ties and shared first words skipped."""
    rng = random.Random(f"data-pairs-{seed}")
    pairs = []
    for prompt in make_prompts(4 * n, seed=seed + 1):
        a, b = random_response(prompt, rng), random_response(prompt, rng)
        score_a, score_b = gold_score(prompt, a), gold_score(prompt, b)
        if score_a == score_b or a.split()[0] == b.split()[0]:
            continue
        chosen, rejected = (a, b) if score_a > score_b else (b, a)
        pairs.append((prompt.text, chosen, rejected))
        if len(pairs) == n:
            return pairs
    raise RuntimeError(f"only {len(pairs)} usable pairs among {4 * n} prompts; raise the prompt count")


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _hh(prompt: str, answer: str) -> str:
    return f"\n\nHuman: {prompt}\n\nAssistant: {answer}"


PREFERENCE_FORMATS: dict[str, Callable[[str, str, str], dict]] = {
    "standard": lambda p, c, r: {"prompt": p, "chosen": c, "rejected": r},
    "conversational": lambda p, c, r: {"prompt": _user(p), "chosen": _assistant(c), "rejected": _assistant(r)},
    "implicit_prompt": lambda p, c, r: {"chosen": f"{p} {c}", "rejected": f"{p} {r}"},
    "conversational_implicit_prompt": lambda p, c, r: {"chosen": _user(p) + _assistant(c),
                                                       "rejected": _user(p) + _assistant(r)},
    "hh_rlhf": lambda p, c, r: {"chosen": _hh(p, c), "rejected": _hh(p, r)},
}
"""file stem → one row in that format"""
PARQUET_FORMATS = ("standard", "conversational")
"""formats also written as .parquet (the others are the same table with other string columns)"""


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_data(out_dir: Path = DATA_DIR) -> list[Path]:
    """Write every data file under `out_dir` (default: the repository's `data/`); returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for split, n in (("train", TRAIN_PROMPTS), ("test", TEST_PROMPTS)):
        rows = [{"prompt": p.text} for p in make_prompts(n, seed=SEED, split=split)]
        written.append(_write_jsonl(out_dir / "prompts" / f"sandbox_{split}.jsonl", rows))
    pairs = sandbox_pairs()
    for name, make_row in PREFERENCE_FORMATS.items():
        rows = [make_row(*pair) for pair in pairs]
        written.append(_write_jsonl(out_dir / "preferences" / f"{name}.jsonl", rows))
        if name in PARQUET_FORMATS:
            path = out_dir / "preferences" / f"{name}.parquet"
            pq.write_table(pa.Table.from_pylist(rows), path)
            written.append(path)
    written.append(_write_jsonl(out_dir / "probes" / "sandbox.jsonl", sandbox_probe_rows(seed=SEED)))
    return written


if __name__ == "__main__":
    for written_path in write_data(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_DIR):
        print(f"{written_path}  {written_path.stat().st_size / 1024:.1f} KB")
