"""Chunk requests -> inference batches: one option set per batch, sorted by length, an audio-seconds budget."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def group_by(items: Sequence[T], key: Callable[[T], Hashable]) -> list[list[T]]:
    groups: dict[Hashable, list[T]] = defaultdict(list)
    for it in items:
        groups[key(it)].append(it)
    return list(groups.values())


def plan_batches(items: Sequence[T], duration_s: Callable[[T], float], budget_s: float,
                 max_items: int, cost_s: Callable[[T], float] | None = None) -> list[list[T]]:
    """Sort by length (longest first, so padding is small) and cut into batches whose padded cost
    (longest item x count) stays within the budget. An item longer than the budget goes alone.

    ``cost_s`` is what one item costs the engine in audio-seconds once padded, when that is not its
    length (Whisper pads every chunk to a 30 s window); it must not fall as the length grows."""
    cost = cost_s or duration_s
    ordered = sorted(items, key=duration_s, reverse=True)
    batches: list[list[T]] = []
    cur: list[T] = []
    for it in ordered:
        longest = cost(cur[0]) if cur else cost(it)
        if cur and (longest * (len(cur) + 1) > budget_s or len(cur) >= max_items):
            batches.append(cur)
            cur = []
        cur.append(it)
    if cur:
        batches.append(cur)
    return batches


def fullest_batch(items: Sequence[T], duration_s: Callable[[T], float], budget_s: float, max_items: int,
                  cost_s: Callable[[T], float] | None = None, holding: T | None = None) -> tuple[list[T], bool]:
    """The batch that holds the most audio within the budget, and whether it is full (as many items as the
    budget lets its longest one's padded cost take, or ``max_items``): a run of the items sorted longest
    first, as plan_batches cuts them, but starting at whichever item gives the most audio, not where the
    cut from the longest item happens to fall. A run's items are each padded to its first one, so the
    fullest run is where lengths are densest (plan_batches' cuts leave runs that straddle a sparse stretch
    of lengths: measured on a pool of 256 chunks of 8-30 s, 18 % of its batches held under 90 % of the
    budget in audio; every run this picks held 90 % or more). ``holding``: an item the batch must contain.
    A full run beats a partial one whatever its audio."""
    cost = cost_s or duration_s
    ordered = sorted(items, key=duration_s, reverse=True)
    if not ordered:
        return [], False
    at = [0.0]
    for it in ordered:
        at.append(at[-1] + duration_s(it))
    where = next(i for i, it in enumerate(ordered) if it is holding) if holding is not None else None
    best: tuple[bool, float, int, int] | None = None
    for i, head in enumerate(ordered):
        c = cost(head)
        k = max(1, min(max_items, int(budget_s // c) if c > 0 else max_items))
        while k > 1 and c * k > budget_s:  # float rounding of the division
            k -= 1
        while k < max_items and c * (k + 1) <= budget_s:
            k += 1
        end = min(len(ordered), i + k)
        if where is not None and not i <= where < end:
            continue
        key = (i + k <= len(ordered), at[end] - at[i], -i, end)
        if best is None or key[:3] > best[:3]:
            best = key
    full, _, neg_i, end = best
    return ordered[-neg_i:end], full


def halves(items: list[T]) -> tuple[list[T], list[T]]:
    mid = max(1, len(items) // 2)
    return items[:mid], items[mid:]


def run_splitting_on_oom(infer: Callable[[list[T]], list], items: list[T], is_oom: Callable[[Exception], bool]) -> list:
    """Run ``infer`` on items; on out-of-memory, halve the batch and run both halves (never below one)."""
    if not items:
        return []
    try:
        return infer(items)
    except Exception as e:
        if not is_oom(e) or len(items) == 1:
            raise
        left, right = halves(items)
        return run_splitting_on_oom(infer, left, is_oom) + run_splitting_on_oom(infer, right, is_oom)


# --- a batch budget sized for the card --------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryCost:
    """What a batch costs in accelerator memory: ``per_s`` bytes per (padded) audio-second it holds,
    plus ``fixed`` bytes whatever its size (workspaces, the decoder's start)."""

    per_s: float
    fixed: float = 0.0


def fit_memory_cost(points: Sequence[tuple[float, float]]) -> MemoryCost:
    """A memory cost from probe batches: (audio-seconds of the batch, peak bytes it added), two or more
    of different sizes. A least-squares line; when the points give no positive slope (noise, an
    allocator that rounds up), the dearest bytes-per-second seen, with nothing fixed, which is never
    below the truth at the sizes probed."""
    pts = [(float(a), max(0.0, float(b))) for a, b in points if a > 0]
    if not pts:
        raise ValueError("no probe batch")
    n = len(pts)
    mean_a = sum(a for a, _ in pts) / n
    mean_b = sum(b for _, b in pts) / n
    var = sum((a - mean_a) ** 2 for a, _ in pts)
    if var > 0:
        slope = sum((a - mean_a) * (b - mean_b) for a, b in pts) / var
        if slope > 0:
            fixed = max(0.0, mean_b - slope * mean_a)
            # the line may pass under a probe; never promise less than a probe actually used
            under = max(b - (fixed + slope * a) for a, b in pts)
            return MemoryCost(per_s=slope, fixed=fixed + max(0.0, under))
    return MemoryCost(per_s=max(b / a for a, b in pts) or 1.0)


def budget_from_memory(free_bytes: float, cost: MemoryCost, fraction: float, floor_s: float,
                       cap_s: float) -> float:
    """Audio-seconds one batch may hold: what ``fraction`` of the card's free memory pays for at
    ``cost``, kept within [floor_s, cap_s] (the floor is one chunk: a budget below it would only say
    "one at a time", which the planner does anyway; the cap is where the request limit binds first)."""
    usable = max(0.0, free_bytes * fraction - cost.fixed)
    budget = usable / cost.per_s if cost.per_s > 0 else cap_s
    return max(floor_s, min(cap_s, budget))
