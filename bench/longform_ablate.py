"""The ablation behind issue 16's fix: asrq's pipeline with one option changed at a time, on the tuning
half of the long-form set (bench/longset.py), beam 5 (tiny.en unless --model). Writes bench/ABLATION-longform.md
(or --out; every variant's words and chunks go next to it, as .raw.json).

``python -m bench.longform_ablate [--short] [--model bundled:base] [--half report] [--only NAME,...]``
(--short: the half's 3-minute recordings only, not its 20-minute one; --half report: for reporting a design
chosen on the tuning half). Decodes are cached by chunk samples (bench/longform_sim.py).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench import longset
from bench.longform import score, totals
from bench.longform_sim import Variant
from bench.measure import run_child

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bundled:tiny.en"

VARIANTS = [
    Variant("product"),
    Variant("chunks 30 s", max_chunk_s=30.0),
    Variant("chunks 25 s", max_chunk_s=25.0),
    Variant("chunks 10 s", max_chunk_s=10.0),
    Variant("pad 0 ms", pad_ms=0),
    Variant("pad 500 ms", pad_ms=500),
    Variant("VAD end silence 800 ms", end_silence_ms=800),
    Variant("VAD end silence 150 ms", end_silence_ms=150),
    Variant("context 1 s each side", context_ms=1000),
    Variant("context 3 s each side", context_ms=3000),
    Variant("previous text as prompt", prompt=True),
    Variant("batched decoder", decoder="batched"),
    Variant("sequential decoder without timestamp tokens", decoder="no-timestamps"),
    Variant("chunks 25 s + no timestamp tokens", max_chunk_s=25.0, decoder="no-timestamps"),
    # the previous chunk's text as a prompt without serialising a job: a second decode, once the first
    # pass is done, of the chunks a rule flags, prompted with the first pass's text of the chunk before.
    # "re-decode all" decodes every chunk twice (the bound); the rules pick from the same cached decodes.
    Variant("first pass (scored)", redecode="none"),
    Variant("re-decode all (prompted)", redecode="all"),
    Variant("re-decode logprob < -0.4", redecode="logprob<-0.4"),
    Variant("re-decode logprob < -0.6", redecode="logprob<-0.6"),
    Variant("re-decode logprob < -0.8", redecode="logprob<-0.8"),
    Variant("re-decode fallback temperature", redecode="temp>0"),
    Variant("re-decode late first word (> 1 s)", redecode="late>1.0"),
    Variant("re-decode logprob < -0.6 or fallback or late", redecode="logprob<-0.6|temp>0|late>1.0"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.longform_ablate")
    ap.add_argument("--short", action="store_true", help="the half's 3-minute recordings only (not its 21-minute one)")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--out", default=str(ROOT / "bench" / "ABLATION-longform.md"))
    ap.add_argument("--half", default="tune", choices=("tune", "report"),
                    help="the half of the set (designs are chosen on tune; report is for reporting a chosen one)")
    ap.add_argument("--model", default=MODEL, help=f"the Whisper model (default {MODEL})")
    args = ap.parse_args(argv)
    names = [r.name for r in longset.RECORDINGS if r.name.startswith(args.half + "_") and
             (not args.short or r.duration_s < 600)]
    recs = longset.build(names)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    variants = [v for v in VARIANTS if not only or v.name in only]
    t0 = time.monotonic()
    model = args.model
    res = run_child("bench.longform_sim", {"model": model, "beam_size": 5, "variants": [asdict(v) for v in variants],
                                           "items": [{"name": r.name, "path": r.path} for r in recs]})
    raw = Path(args.out).with_suffix(".raw.json")  # every variant's words and chunks, for a closer look
    raw.write_text(json.dumps(res["results"]))
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "bench.longform_ablate", *(argv or sys.argv[1:])])
    lines = ["# Ablation: asrq's long-form accuracy, one pipeline option changed at a time", "",
             f"Command: `{command}` ({time.monotonic() - t0:.0f} s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})  ",
             (f"{model}, beam 5, the {args.half} half of bench/longset.py: {', '.join(names)}. "
              "WER after tests/wer.py's normalisation; starts: sentences whose first word is placed within 0.3 s."), "",
             "| variant | chunks | decoded twice | WER all | " + " | ".join(n.removeprefix(args.half + "_") for n in names)
             + " | starts |",
             "|---|---|---|---|" + "---|" * len(names) + "---|"]
    total_s = sum(r.duration_s for r in recs)
    for v in variants:
        got = res["results"][v.name]["items"]
        scores = [score(r, got[r.name]["words"]) for r in recs]
        sm = totals(scores)
        per = " | ".join(f"{100 * s['errors'] / s['ref_words']:.2f}" for s in scores)
        n_chunks = sum(len(got[r.name]["chunks"]) for r in recs)
        twice = got.get("_redecoded_s", 0.0) / total_s
        lines.append(f"| {v.name} | {n_chunks} | {twice:.0%} | {100 * sm['wer']:.2f} % | {per} | {sm['starts_ok']:.1%} |")
    from bench.longform import PEERS, SYSTEM_NAMES, run_system

    for peer in PEERS:  # the bar: what a user gets from faster-whisper on the same recordings
        got = run_system(peer, model, recs)
        scores = [score(r, got[r.name]["words"]) for r in recs]
        sm = totals(scores)
        per = " | ".join(f"{100 * s['errors'] / s['ref_words']:.2f}" for s in scores)
        lines.append(f"| *{SYSTEM_NAMES[peer]}* | - | - | {100 * sm['wer']:.2f} % | {per} | {sm['starts_ok']:.1%} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
