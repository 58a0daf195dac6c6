"""Chunk requests -> inference batches: one option set per batch, sorted by length, an audio-seconds budget."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")


def group_by(items: Sequence[T], key: Callable[[T], Hashable]) -> list[list[T]]:
    groups: dict[Hashable, list[T]] = defaultdict(list)
    for it in items:
        groups[key(it)].append(it)
    return list(groups.values())


def plan_batches(items: Sequence[T], duration_s: Callable[[T], float], budget_s: float,
                 max_items: int) -> list[list[T]]:
    """Sort by length (longest first, so padding is small) and cut into batches whose padded cost
    (longest item x count) stays within the budget. An item longer than the budget goes alone."""
    ordered = sorted(items, key=duration_s, reverse=True)
    batches: list[list[T]] = []
    cur: list[T] = []
    for it in ordered:
        longest = duration_s(cur[0]) if cur else duration_s(it)
        if cur and (longest * (len(cur) + 1) > budget_s or len(cur) >= max_items):
            batches.append(cur)
            cur = []
        cur.append(it)
    if cur:
        batches.append(cur)
    return batches


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
