"""Labels per second that concurrent annotators' processes sustain against one PreferenceStore.

Each writer is its own process with its own connection (as each annotator's notebook is). All start
together, then for `--seconds` each labels as fast as it can — `record` alone (every annotator labels
every pair, as without a team), or with `--team R` the way a team's panels do: `next_pair` (hand-out
with overlap R) then `record`. Every label is durable when `record` returns (fsync on the server, or
SQLite's synchronous=FULL).

    python benchmarks/labeling_throughput.py                       # 8 writers, PostgreSQL it starts itself
    python benchmarks/labeling_throughput.py --team 2              # hand-out + label, overlap 2
    python benchmarks/labeling_throughput.py --store postgresql://me@host/db?options=-csearch_path%3Dbench
    python benchmarks/labeling_throughput.py --store /tmp/bench.sqlite   # the same on SQLite

Without `--store`, a throw-away PostgreSQL server is started on loopback with scripts/postgres.sh and
stopped at the end. The store must be empty (its pairs are made here). Prints one JSON line: labels/s
summed over writers, per-writer rates, and the median / 95th-percentile latency (ms) of `record` and of
`next_pair`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rlhf_widgets.labeling.store import PreferenceStore  # noqa: E402


def writer(store_target: str, name: str, start_at: float, seconds: float, team: bool) -> dict:
    """One annotator's process: label from `start_at` for `seconds`; its counts and latencies (s)."""
    record_s: list[float] = []
    next_s: list[float] = []
    with PreferenceStore(store_target) as store:
        pairs = len(store)
        time.sleep(max(0.0, start_at - time.time()))
        end = start_at + seconds
        i = 0
        while time.time() < end:
            if team:
                t0 = time.perf_counter()
                pair = store.next_pair(name)
                next_s.append(time.perf_counter() - t0)
                if pair is None:
                    break
                pair_id = pair.id
            else:
                pair_id = 1 + i % pairs
            t0 = time.perf_counter()
            store.record(pair_id, "ab"[i % 2], annotator=name, note=f"bench {i}")
            record_s.append(time.perf_counter() - t0)
            i += 1
    return {"name": name, "labels": len(record_s), "record_s": record_s, "next_pair_s": next_s}


def percentile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(store_target: str, writers: int, seconds: float, team: int | None, pairs: int) -> dict:
    with PreferenceStore(store_target) as store:
        if len(store):
            raise SystemExit(f"{store.target} already has pairs; give an empty store")
        store.add_pairs({"prompt": f"Benchmark prompt {i}: my order hasn't arrived.", "response_a": f"answer a {i}",
                         "response_b": f"answer b {i}"} for i in range(pairs))
        if team:
            store.set_team(team)
        backend = store.backend
    start_at = time.time() + 3.0  # every process is up and connected by then
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", store_target, f"w{k}", str(start_at),
                               str(seconds), "team" if team else "plain"], stdout=subprocess.PIPE, text=True)
             for k in range(writers)]
    results = [json.loads(proc.communicate()[0]) for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit("a writer failed")
    records = [s for r in results for s in r["record_s"]]
    nexts = [s for r in results for s in r["next_pair_s"]]
    with PreferenceStore(store_target) as store:
        stored = len(store.labels(include_history=True))
    total = sum(r["labels"] for r in results)
    assert stored == total, f"{stored} labels stored, {total} acknowledged"
    return {
        "backend": backend, "writers": writers, "seconds": seconds, "team_overlap": team, "pairs": pairs,
        "labels": total, "labels_per_s": round(total / seconds, 1),
        "per_writer_labels_per_s": [round(r["labels"] / seconds, 1) for r in results],
        "record_ms_median": round(1000 * statistics.median(records), 2),
        "record_ms_p95": round(percentile_ms(records, 0.95), 2),
        "next_pair_ms_median": round(1000 * statistics.median(nexts), 2) if nexts else None,
        "next_pair_ms_p95": round(percentile_ms(nexts, 0.95), 2) if nexts else None,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        target, name, start_at, seconds, mode = sys.argv[2:7]
        print(json.dumps(writer(target, name, float(start_at), float(seconds), mode == "team")))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="an empty store: a postgresql:// URL or an SQLite path "
                                        "(default: a throw-away PostgreSQL server on loopback)")
    parser.add_argument("--writers", type=int, default=8, help="concurrent annotator processes (default 8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long they label (default 10)")
    parser.add_argument("--team", type=int, default=None, metavar="R",
                        help="hand pairs out with overlap R (next_pair + record) instead of record alone")
    parser.add_argument("--pairs", type=int, default=20_000, help="pairs in the store (default 20000)")
    args = parser.parse_args()
    if args.store:
        print(json.dumps(run(args.store, args.writers, args.seconds, args.team, args.pairs)))
        return
    with tempfile.TemporaryDirectory() as state_dir:
        env = {**os.environ, "RLHF_WIDGETS_PG_STATE": str(Path(state_dir) / "state")}
        url = subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh"), "start"], env=env, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        try:
            print(json.dumps(run(url, args.writers, args.seconds, args.team, args.pairs)))
        finally:
            subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh"), "stop"], env=env, check=True)


if __name__ == "__main__":
    main()
