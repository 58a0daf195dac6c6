"""Which job phases each fault kind targets, the cells a campaign must cover (fault kind x phase), and the
coverage matrix: per cell, how many faults landed while a job was in that phase, and why a missed cell
was missed."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tests.chaos.database import IN_FLIGHT
from tests.chaos.fleet import PROCESS_KINDS

FAULT_KINDS = tuple(f"{sig}:{p}" for p in PROCESS_KINDS for sig in ("kill9", "sigterm")) + (
    "kill9:cpu-child", "kill9:gpu-child", "redis:restart", "redis:flush", "pg:restart", "s3:outage",
    "dup:deliver")


def targets(kind: str) -> tuple[str, ...]:
    """The phases a fault kind is aimed at: where the process it hits holds work, or (services,
    duplicates) every phase, since each phase keeps a different state in them."""
    if kind.endswith(("cpu", "cpu-child")):
        return ("QUEUED", "PREPARING", "FINALIZING")
    if kind.endswith(("gpu", "gpu-child")):
        return ("TRANSCRIBING",)
    if kind.endswith(("api", "beat")):
        # the API publishes after it answers (a job QUEUED with its message on the way); the beat
        # re-sends lost QUEUED jobs and takes over dead TRANSCRIBING leases
        return ("QUEUED", "TRANSCRIBING")
    return IN_FLIGHT


def all_cells() -> list[tuple[str, str]]:
    return [(k, p) for k in FAULT_KINDS for p in targets(k)]


def required_cells(seed: int, every_cell: bool) -> list[tuple[str, str]]:
    """Every (kind, phase), or (quick mode) every kind once, in a seeded one of its phases: over seeds,
    every cell comes round."""
    if every_cell:
        return all_cells()
    rng = random.Random(seed * 7919 + 11)
    return [(k, rng.choice(targets(k))) for k in FAULT_KINDS]


@dataclass
class Coverage:
    """Per cell: faults injected while a job was in that phase, tries that found none, and why not."""

    required: list[tuple[str, str]]
    hits: Counter = field(default_factory=Counter)
    misses: Counter = field(default_factory=Counter)  # a wait for the phase that saw none
    why: dict = field(default_factory=lambda: defaultdict(list))

    def hit(self, kind: str, phase: str | None) -> None:
        if phase is not None:
            self.hits[(kind, phase)] += 1

    def miss(self, kind: str, phase: str | None, why: str) -> None:
        if phase is not None:
            self.misses[(kind, phase)] += 1
            if why not in self.why[(kind, phase)]:
                self.why[(kind, phase)].append(why)

    def missing(self) -> list[tuple[str, str]]:
        return [c for c in self.required if not self.hits[c]]

    def matrix(self) -> list[str]:
        """The matrix as lines: a row per kind, a column per phase; n = faults that hit the cell,
        '-' = not a phase it targets, '0!' = a required cell missed, '0' = not required in this mode."""
        req = set(self.required)
        head = f"  {'kind':16s} " + " ".join(f"{p[:6]:>7s}" for p in IN_FLIGHT)
        lines = [head]
        for k in FAULT_KINDS:
            cells = []
            for p in IN_FLIGHT:
                if p not in targets(k):
                    cells.append(f"{'-':>7s}")
                else:
                    n = self.hits[(k, p)]
                    cells.append(f"{str(n) + ('!' if not n and (k, p) in req else '') + ('*' if (k, p) in req else ''):>7s}")
            lines.append(f"  {k:16s} " + " ".join(cells))
        for c in self.missing():
            lines.append(f"  missed {c[0]} @{c[1]}: {self.misses[c]} waits saw no job there"
                         + (f" ({'; '.join(self.why[c])})" if self.why[c] else ""))
        return lines
