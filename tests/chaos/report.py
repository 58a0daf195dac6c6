"""The campaign's report: the lines it prints as it goes, the checks with their verdicts, the numbers it
measured, and the table and log of the faults."""

from __future__ import annotations

import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tests.chaos.database import IN_FLIGHT
from tests.chaos.faults import FAULT_KINDS, Fault
from tests.services import ROOT


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def add(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, ok, detail))
        self.add(f"  [{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}")

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]


def fmt_s(v: float) -> str:
    return "never" if v == float("inf") else f"{v:.1f} s"


def tree() -> str:
    """The commit the campaign ran on, and whether it had changes on top."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return (head + (" + uncommitted changes" if dirty else "")) if head else "not a git checkout"
    except OSError:
        return "?"


def fault_table(r: Report, faults: list[Fault], labels: dict[str, str]) -> None:
    """Faults by kind (with the job states at each injection and the longest recovery), then every fault in order."""
    cols = ["unsubmitted", *IN_FLIGHT, "COMPLETED", "FAILED"]
    short = {"unsubmitted": "unsub", "QUEUED": "QUEUED", "PREPARING": "PREPAR", "TRANSCRIBING": "TRANSC",
             "FINALIZING": "FINAL", "COMPLETED": "COMPL", "FAILED": "FAILED"}
    r.add("")
    r.add("faults by kind: n injected, n that found a job in their target phase, and job states in the DB at")
    r.add("each injection (summed over that kind's injections); recovery = longest wait of a job in flight")
    r.add(f"  {'kind':16s} {'n':>3s} {'hit':>3s} " + " ".join(f"{short[c]:>6s}" for c in cols)
          + f" {'recovery':>9s}")
    by_kind: dict[str, list[Fault]] = defaultdict(list)
    for f in faults:
        by_kind[f.kind].append(f)
    for kind in FAULT_KINDS:
        fs = by_kind.get(kind, [])
        if not fs:
            r.add(f"  {kind:16s} {0:3d}")
            continue
        sums = Counter()
        for f in fs:
            sums.update(f.states)
        rec = [f.recovery_s for f in fs if f.recovery_s is not None]
        r.add(f"  {kind:16s} {len(fs):3d} {sum(f.found_target for f in fs):3d} "
              + " ".join(f"{sums.get(c, 0):6d}" for c in cols)
              + f" {fmt_s(max(rec)) if rec else '-':>9s}")
    r.add("")
    r.add("fault log (t after the chaos run started, target phase, job states at injection, what happened)")
    for f in faults:
        st = " ".join(f"{short[c]}={f.states[c]}" for c in cols if f.states.get(c))
        rec = "" if f.recovery_s is None else \
            f"; recovery {fmt_s(f.recovery_s)} ({labels.get(f.recovery_job, '?').split(' ')[0]})"
        r.add(f"  +{f.at:6.1f}s {f.kind:16s} {('@' + f.target) if f.target else '@any':14s} "
              f"{'' if f.found_target else '(target not seen) '}[{st}] {f.note}{rec}")
