"""ITN on one long Mandarin clause (a job with no punctuation model), before and after issue 17 item 5.

"before" is the same code with no cut (``max_piece_chars`` unbounded): the grammar and difflib see the
whole clause, as they did; "after" is workers/itn.py as it is. Both run in this process on the same
text (tests/mandarin_text.py: its sentences joined, characters 0.2 s apart), alternating size by size, so
they meet the same machine load. A second table times the alignment alone, with a regex in place of the
grammar (tests/mandarin_text.numerals_as_digits), since the grammar's own cost is most of the first. The target: the cost grows linearly, so 150,000 characters (about 10
hours of speech) take at most 1.5 times 7.5 times what 20,000 take; and where "before" ran, both give
the same words with the same times.

    python -m bench.itn_scaling [--sizes 5000,10000,20000,150000] [--before-up-to 20000] [--only itn|aligner]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LINEAR_SLACK = 1.5


def timed(fn):  # noqa: ANN001, ANN201
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _table(title: str, sizes: list[int], before_up_to: int, run) -> dict[int, float]:  # noqa: ANN001
    """``run(words, max_piece_chars)`` timed before (no cut) and after, size by size; the after times."""
    from tests.mandarin_text import mandarin_words

    print(f"\n{title}\n{'chars':>8} {'before_s':>9} {'after_s':>8} {'ratio':>6}  same words and times", flush=True)
    after: dict[int, float] = {}
    for n in sizes:
        words = mandarin_words(n)
        after[n], new = timed(lambda: run(words, None))
        if n <= before_up_to:
            before_s, old = timed(lambda: run(words, 10**9))
            print(f"{n:>8} {before_s:>9.2f} {after[n]:>8.2f} {before_s / after[n]:>5.1f}x  {old == new}", flush=True)
        else:
            print(f"{n:>8} {'-':>9} {after[n]:>8.2f} {'-':>6}  -", flush=True)
    if 20000 in after and 150000 in after:
        growth = after[150000] / after[20000]
        ok = growth <= 7.5 * LINEAR_SLACK
        print(f"{'PASS' if ok else 'MISS'}: 150,000 characters cost {growth:.1f}x what 20,000 do "
              f"(linear: 7.5x; target at most {7.5 * LINEAR_SLACK:.2f}x)", flush=True)
    return after


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,10000,20000,150000")
    ap.add_argument("--before-up-to", type=int, default=20000,
                    help="run 'before' only up to this many characters (150,000 take many minutes)")
    ap.add_argument("--only", choices=("itn", "aligner"), help="one of the two tables")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("asrq.itn").setLevel(logging.WARNING)
    from tests.mandarin_text import numerals_as_digits
    from workers.itn import MAX_PIECE_CHARS, get_normalizer, normalize_words

    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    if args.only != "aligner":
        get_normalizer()  # loaded once (about 0.5 s), not timed
        _table("ITN: WeTextProcessing's grammar and the alignment", sizes, args.before_up_to,
               lambda w, cut: normalize_words(w, True, max_piece_chars=cut or MAX_PIECE_CHARS))
    if args.only != "itn":
        _table("the alignment alone (a regex in place of the grammar)", sizes, args.before_up_to,
               lambda w, cut: normalize_words(w, True, numerals_as_digits, max_piece_chars=cut or MAX_PIECE_CHARS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
