"""``slowed-demo``: what SLowED is for, in one command — a small study of the engine (:mod:`.study`, config ``demo``).

1. build (or reuse) a safety-aligned SmolLM2-135M-Instruct with the fast alignment recipe (cached after the first run);
2. distil the same 16 SVAMP teacher rationales into it with each method (default: plain SFT, SLowED, SLowED with the
   safety anchor) under one budget — 4 steps at lr 5e-4, one seed — with a cheap checkpoint (refusals, held-out NLL)
   after every step and a full one (harmful KL, benign false refusals) at the end;
3. print one table — start / each method — with plain-language verdicts (including where a method does not behave as
   expected), and write ``report.json``, ``over_steps.png``, the study's ``results.md`` and the SLowED ``adapter/``.

Under Adam, Slow Tuning's ``slow_factor`` γ acts as a learning-rate change (``docs/results.md``): the ``sft lr×γ``
method (plain SFT at ``learning_rate × slow_factor``) shows that control. ``anchored`` trains at SFT's own learning
rate with the delta kept out of the input directions of generic chat prompts — the setting the harder frontier
recommends. Any study argument works here (``slowed-demo --methods sft "sft lr×γ" slowed``); finished runs in
``output_dir`` are reused when their arguments match.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``; the shipped ``demo`` config unless ``--config`` is given), run the
    study, print the demo's table and verdicts; returns the report that ``report.json`` holds."""
    from dataclasses import asdict

    from ..utils.allocator import keep_freed_memory
    from .demo_report import format_table, verdicts
    from .runs import load_runs
    from .study import parse, run_all

    args = parse(argv, default_config="demo")
    keep_freed_memory()  # as slowed-sft: CPU training steps stop page-faulting
    started = time.time()
    run_all(args)
    out = Path(args.output_dir)
    initial = json.loads((out / "initial.json").read_text())
    loaded = load_runs(out)
    methods = dict.fromkeys(m for m, _ in args.plan())  # the table's columns in the order asked
    runs = {m: loaded[m] for m in args.methods or methods if m in loaded}
    table = format_table(args, initial, runs)
    lines = verdicts(args, initial, runs)
    wall = round((time.time() - started) / 60, 2)
    report = {
        "args": asdict(args),
        "start": {k: v for k, v in initial.items() if not isinstance(v, list)},
        "runs": {m: rs[0] for m, rs in runs.items()},
        "table": table,
        "verdicts": lines,
        "seconds": {m: rs[0]["seconds"] for m, rs in runs.items()},
        "wall_time_min": wall,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    saved = f"; adapter ({args.save_adapter}): {out / 'adapter'}" if args.save_adapter in runs else ""
    print(f"\n{table}\n\n" + "\n".join(f"- {line}" for line in lines))
    print(f"\nwall time {wall:.1f} min; plot: {out / 'over_steps.png'}{saved}")
    return report


def cli() -> None:
    """``slowed-demo``: :func:`run`, exiting 0 on success."""
    run()


if __name__ == "__main__":
    cli()
