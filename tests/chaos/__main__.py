"""python -m tests.chaos --seed N [--quick] [--part soak|timing|backlog|all] [--workdir DIR]: exit 0 only when every
guarantee held."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import tests.chaos
from tests.chaos.campaign import run_campaign


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description=tests.chaos.__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="~30 jobs and 300 backlog jobs (CI)")
    ap.add_argument("--part", choices=["soak", "timing", "backlog", "all"], default="all")
    ap.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temp folder, removed "
                                                               "when the campaign passes)")
    a = ap.parse_args(argv)

    def _terminate(_sig, _frame):  # noqa: ANN001, ANN202 - a CI timeout: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    r = run_campaign(a.seed, a.quick, a.part, a.workdir)
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
