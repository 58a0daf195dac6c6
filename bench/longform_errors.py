"""Where asrq's long-form errors are, against the peers': per recording, the errors in the first 2 s of
one of asrq's chunks (where a decode has no words before it) and elsewhere, for asrq (a variant of an
ablation run) and the cached peers; then WER per recording and overall (issue 16's notes).

``python -m bench.longform_errors RAW.json [--variant NAME] [--model bundled:base]`` (RAW: the .raw.json an
ablation writes next to its --out; several may be given, comma-separated, e.g. one per half).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import longset
from bench.longform import PEERS, RESULTS, _tokens, score, totals

NEAR_S = 2.0


def split_errors(rec: longset.Built, words: list, chunk_starts_s: list[float]) -> tuple[int, int]:
    """(errors within NEAR_S after a chunk start, errors elsewhere), each error placed at its hypothesis word."""
    import jiwer

    from tests.wer import normalise

    ref = " ".join(normalise(t) for _, t in rec.starts)
    hyp = _tokens(words)
    out = jiwer.process_words(ref, " ".join(t for t, _ in hyp) or "<empty>")
    near = far = 0
    for ch in out.alignments[0]:
        if ch.type == "equal":
            continue
        t = hyp[min(ch.hyp_start_idx, len(hyp) - 1)][1] if hyp else 0.0
        n = max(ch.ref_end_idx - ch.ref_start_idx, ch.hyp_end_idx - ch.hyp_start_idx)
        if any(0 <= t - s < NEAR_S for s in chunk_starts_s):
            near += n
        else:
            far += n
    return near, far


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.longform_errors")
    ap.add_argument("raw")
    ap.add_argument("--variant", default="first pass (scored)")
    ap.add_argument("--model", default="bundled:base")
    args = ap.parse_args(argv)
    scores: dict[str, list] = {}
    print(f"| recording | asrq WER | best peer WER | asrq - best | errors near chunk starts / all: asrq | "
          f"{' | '.join(PEERS)} |\n|---|---|---|---|---|" + "---|" * len(PEERS))
    for raw in args.raw.split(","):
        items = json.loads(Path(raw).read_text())[args.variant]["items"]
        for rec in longset.build([n for n in items if not n.startswith("_")]):
            starts = [a / 1000 for a, _ in items[rec.name]["chunks"]]
            words = {"asrq": items[rec.name]["words"]}
            for peer in PEERS:
                found = sorted(RESULTS.glob(f"{peer}-{args.model.replace(':', '_')}-{rec.name}-*.json"))
                words[peer] = json.loads(found[-1].read_text())["words"]
            sc = {k: score(rec, w) for k, w in words.items()}
            for k, v in sc.items():
                scores.setdefault(k, []).append(v)
            wer = {k: 100 * v["errors"] / v["ref_words"] for k, v in sc.items()}
            best = min(wer[p] for p in PEERS)
            split = [split_errors(rec, w, starts) for w in words.values()]
            print(f"| {rec.name} | {wer['asrq']:.2f} | {best:.2f} | {wer['asrq'] - best:+.2f} | "
                  + " | ".join(f"{a}/{a + b}" for a, b in split) + " |")
    for k, v in scores.items():
        t = totals(v)
        print(f"{k}: {100 * t['wer']:.2f} % WER ({sum(x['errors'] for x in v)} errors of "
              f"{sum(x['ref_words'] for x in v)} words), {t['starts_ok']:.1%} starts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
