"""Start-up cost of the ``slowed_peft_hook.pth`` hook: ``python -c pass`` with the hook on vs. off, in one run.

Runs are interleaved (on, off, on, off, ...) so machine load affects both arms alike; prints the median wall time of
each and their ratio. ``python benchmarks/bench_startup.py [N]`` (default N = 40 per arm).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time


def one(env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - t


def main(n: int = 40) -> dict:
    on = {k: v for k, v in os.environ.items() if k != "SLOWED_PEFT_NO_HOOK"}
    off = {**on, "SLOWED_PEFT_NO_HOOK": "1"}
    one(on), one(off)  # warm the file cache
    times = {"hook on": [], "hook off": []}
    for _ in range(n):
        times["hook on"].append(one(on))
        times["hook off"].append(one(off))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["hook on"] / med["hook off"]
    print(f"python -c pass, median of {n}: hook on {med['hook on'] * 1e3:.1f} ms, off {med['hook off'] * 1e3:.1f} ms,")
    print(f"ratio on/off = {ratio:.3f}")
    return {**med, "ratio": ratio}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
