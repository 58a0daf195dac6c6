"""`python -m bench.cpu_decoders [--rounds N] [--full]`: one CPU decoder on every thread against one
decoder per thread (ASRQ_CPU_DECODERS), measured as the engine limit on the same chunks, alternating
within one run so that a machine whose speed drifts treats both alike. Prints each round, the medians
and their ratio; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from bench import corpus, measure
from bench.run import log, payload


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cpu_decoders", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="the full corpus instead of the quick one")
    args = ap.parse_args(argv)
    items = corpus.build(corpus.FULL if args.full else corpus.QUICK, log=log)
    audio_s = sum(i.duration_s for i in items)
    cores = len(os.sched_getaffinity(0))
    layouts = {"one decoder": 1, f"{cores} decoders": 0}  # 0: the default, one per thread
    times: dict[str, list[float]] = {k: [] for k in layouts}
    for n in range(args.rounds):
        for label, decoders in (layouts.items() if n % 2 == 0 else reversed(layouts.items())):
            r = measure.run_child("bench.engine_limit", {**payload(items), "cpu_decoders": decoders})
            times[label].append(r["infer_s"])
            wer = measure.corpus_wer([i.reference for i in items], [r["hyps"].get(i.name, "") for i in items])
            log(f"round {n + 1} {label}: {r['infer_s']:.1f} s, RTFx {audio_s / r['infer_s']:.1f}, "
                f"WER {wer * 100:.2f} %")
    med = {k: statistics.median(v) for k, v in times.items()}
    one, many = med.values()
    print(f"\n{len(items)} files, {audio_s:.0f} s of audio, {cores} cores, median of {args.rounds} rounds each:")
    for k, v in med.items():
        print(f"  {k:14} {v:7.1f} s  RTFx {audio_s / v:5.1f}")
    print(f"  ratio (throughput, {cores} decoders / one decoder): {one / many:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
