"""erpwatch crash → restart latency alone (a script, not a test). Loopback only, bounded.

Runs ``erpwatch run`` on the seed backend (bench/seed_backend.py: uvicorn + the health kit;
1 s HTTP check, no restart backoff), SIGKILLs
the backend by its PID N times (each after it has answered and run 1.2 s) and times, from the
kill, the new backend process appearing (/proc polled every 1 ms) and our own client's first
200 from /health. Prints min / median / max.

    .venv/bin/python -m bench.bench_restart            # 20 crashes
    .venv/bin/python -m bench.bench_restart --crashes 50 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# `python bench/<this>.py` works as well as `python -m bench.<this>`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peers import Erpwatch
from bench.trials import fault_trials, new_scenario

TARGET_MEDIAN_S = 0.020


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--crashes", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    trials = fault_trials(Erpwatch(), new_scenario(), inject="crash", count=args.crashes)
    result = trials.to_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, label in (
            ("restart_s", "crash -> new process"),
            ("healthy_s", "crash -> first healthy answer"),
        ):
            s = result[key]
            if not s["n"]:
                print(f"{label}: no sample")
                continue
            print(
                f"{label} ({s['n']} crashes): min {s['min'] * 1000:.1f} ms, "
                f"median {s['median'] * 1000:.1f} ms, max {s['max'] * 1000:.1f} ms"
            )
        for failure in trials.failures:
            print(f"failure: {failure}")
    median = result["restart_s"]["median"]
    ok = median is not None and median <= TARGET_MEDIAN_S and not trials.failures
    if not args.json:
        print(f"target: median <= {TARGET_MEDIAN_S * 1000:.0f} ms: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
