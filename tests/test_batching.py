"""plan_batches (audio-seconds budget, max items, longest first), group_by, and OOM batch splitting."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from workers.batching import fullest_batch, group_by, halves, plan_batches, run_splitting_on_oom
from workers.engines.base import EngineOutOfMemory


@dataclass(frozen=True)
class Item:
    name: str
    dur: float
    opts: tuple = ()


def dur(it: Item) -> float:
    return it.dur


def _check(batches: list[list[Item]], items: list[Item], budget: float, max_items: int) -> None:
    flat = [it for b in batches for it in b]
    assert sorted(flat, key=lambda i: i.name) == sorted(items, key=lambda i: i.name)  # each item exactly once
    assert [it.dur for it in flat] == sorted((it.dur for it in items), reverse=True)  # longest first overall
    for b in batches:
        assert b, "empty batch"
        assert len(b) <= max_items
        assert [i.dur for i in b] == sorted((i.dur for i in b), reverse=True)
        if len(b) > 1:  # a single item may exceed the budget: it goes alone
            assert max(i.dur for i in b) * len(b) <= budget, b


def test_empty():
    assert plan_batches([], dur, 100, 8) == []


def test_sorted_longest_first_and_budget():
    items = [Item("a", 10), Item("b", 30), Item("c", 20), Item("d", 30), Item("e", 5)]
    batches = plan_batches(items, dur, budget_s=90, max_items=10)
    # 30+30 -> padded 60; adding c makes 3x30 = 90 (fits); adding a makes 4x30 = 120 > 90
    assert [[i.name for i in b] for b in batches] == [["b", "d", "c"], ["a", "e"]]
    _check(batches, items, 90, 10)


def test_budget_boundary_is_inclusive():
    items = [Item(str(i), 10) for i in range(10)]
    batches = plan_batches(items, dur, budget_s=40, max_items=100)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_max_items():
    items = [Item(str(i), 1) for i in range(10)]
    batches = plan_batches(items, dur, budget_s=1_000, max_items=3)
    assert [len(b) for b in batches] == [3, 3, 3, 1]


def test_item_over_budget_goes_alone():
    items = [Item("big", 500), Item("s1", 10), Item("s2", 10), Item("huge", 900)]
    batches = plan_batches(items, dur, budget_s=100, max_items=10)
    assert [[i.name for i in b] for b in batches] == [["huge"], ["big"], ["s1", "s2"]]
    _check(batches, items, 100, 10)


def test_equal_lengths_keep_input_order():
    items = [Item(str(i), 3) for i in range(5)]
    batches = plan_batches(items, dur, budget_s=6, max_items=10)
    assert [[i.name for i in b] for b in batches] == [["0", "1"], ["2", "3"], ["4"]]


def test_random_plans_respect_budget_and_limits():
    rng = random.Random(11)
    for _ in range(300):
        items = [Item(f"i{k}", round(rng.uniform(0.1, 60), 2)) for k in range(rng.randint(0, 80))]
        budget = rng.choice([30.0, 120.0, 240.0, 1_000.0])
        max_items = rng.randint(1, 64)
        batches = plan_batches(items, dur, budget, max_items)
        _check(batches, items, budget, max_items)
        # greedy: a batch was closed only because the next item would break the budget or the count
        for b, nxt in zip(batches, batches[1:]):
            assert len(b) == max_items or b[0].dur * (len(b) + 1) > budget


def _runs(items: list[Item], budget: float, max_items: int, cost=dur) -> list[tuple[list[Item], bool]]:  # noqa: ANN001
    """Every run of the items sorted longest first that the budget lets its first item head (brute force)."""
    ordered = sorted(items, key=dur, reverse=True)
    out = []
    for i in range(len(ordered)):
        k = 1
        while k < max_items and cost(ordered[i]) * (k + 1) <= budget:
            k += 1
        out.append((ordered[i:i + k], i + k <= len(ordered)))
    return out


def test_fullest_batch_is_the_run_with_most_audio():
    rng = random.Random(18)
    for _ in range(300):
        items = [Item(f"i{k}", round(rng.uniform(0.5, 30), 2)) for k in range(rng.randint(1, 80))]
        budget = rng.choice([30.0, 120.0, 496.0])
        max_items = rng.randint(1, 64)
        holding = rng.choice([None, rng.choice(items)])
        batch, full = fullest_batch(items, dur, budget, max_items, holding=holding)
        runs = [(b, f) for b, f in _runs(items, budget, max_items) if holding is None or holding in b]
        assert (batch, full) in runs
        assert len(batch) <= max_items and (len(batch) == 1 or batch[0].dur * len(batch) <= budget)
        best_full = max((sum(i.dur for i in b) for b, f in runs if f), default=None)
        if best_full is not None:  # a full run whenever there is one, and none fuller
            assert full and sum(i.dur for i in batch) == pytest.approx(best_full)


def test_fullest_batch_skips_a_sparse_stretch_of_lengths():
    """plan_batches cuts from the longest item: its first batch is the 6 s item alone (a second would pass
    the 10 s budget); the fullest run is the three of 3.3 s."""
    items = [Item("a", 6.0), Item("b", 3.3), Item("c", 3.3), Item("d", 3.3)]
    assert plan_batches(items, dur, 10.0, 8)[0] == [items[0]]
    assert fullest_batch(items, dur, 10.0, 8) == (items[1:], True)
    assert fullest_batch(items, dur, 10.0, 8, holding=items[0]) == ([items[0]], True)
    # padded cost (Whisper's 30 s window): the count, not the lengths, bounds a batch
    assert fullest_batch(items, dur, 60.0, 8, cost_s=lambda _: 30.0) == (items[:2], True)
    assert fullest_batch([], dur, 10.0, 8) == ([], False)


def test_group_by_keeps_option_sets_apart():
    items = [Item("a", 1, ("en",)), Item("b", 2, ("zh",)), Item("c", 3, ("en",)), Item("d", 4, ("en", "hot")),
             Item("e", 5, ("zh",))]
    groups = group_by(items, lambda i: i.opts)
    assert [[i.name for i in g] for g in groups] == [["a", "c"], ["b", "e"], ["d"]]
    for g in groups:
        assert len({i.opts for i in g}) == 1
    assert group_by([], lambda i: i) == []


def test_halves():
    assert halves([1, 2, 3, 4, 5]) == ([1, 2], [3, 4, 5])
    assert halves([1, 2]) == ([1], [2])
    assert halves([1]) == ([1], [])


# ---- run_splitting_on_oom --------------------------------------------------------------------------------------


def _is_oom(e: Exception) -> bool:
    return isinstance(e, EngineOutOfMemory)


def test_no_oom_runs_once():
    calls = []

    def infer(batch):
        calls.append(list(batch))
        return [x * 10 for x in batch]

    assert run_splitting_on_oom(infer, [1, 2, 3], _is_oom) == [10, 20, 30]
    assert calls == [[1, 2, 3]]


@pytest.mark.parametrize("n, fits", [(8, 2), (7, 3), (13, 1), (64, 5), (5, 4)])
def test_halves_until_it_fits_and_keeps_input_order(n, fits):
    calls = []

    def infer(batch):
        calls.append(len(batch))
        if len(batch) > fits:
            raise EngineOutOfMemory(f"{len(batch)} items do not fit")
        return [f"r{x}" for x in batch]

    items = list(range(n))
    assert run_splitting_on_oom(infer, items, _is_oom) == [f"r{x}" for x in items]
    successful = [c for c in calls if c <= fits]
    assert sum(successful) == n  # every item inferred exactly once
    assert all(c <= fits for c in successful)


def test_non_oom_error_is_reraised_without_splitting():
    calls = []

    def infer(batch):
        calls.append(len(batch))
        raise ValueError("bad audio")

    with pytest.raises(ValueError, match="bad audio"):
        run_splitting_on_oom(infer, [1, 2, 3, 4], _is_oom)
    assert calls == [4]


def test_non_oom_error_in_a_half_is_reraised():
    def infer(batch):
        if len(batch) > 2:
            raise EngineOutOfMemory("oom")
        if 3 in batch:
            raise KeyError("boom")
        return batch

    with pytest.raises(KeyError):
        run_splitting_on_oom(infer, [1, 2, 3, 4], _is_oom)


def test_single_item_oom_reraises():
    calls = []

    def infer(batch):
        calls.append(len(batch))
        raise EngineOutOfMemory("even one does not fit")

    with pytest.raises(EngineOutOfMemory):
        run_splitting_on_oom(infer, [1], _is_oom)
    assert calls == [1]


def test_one_item_that_never_fits_in_a_larger_batch_reraises():
    def infer(batch):
        if len(batch) > 1 or batch == ["huge"]:
            raise EngineOutOfMemory("oom")
        return batch

    with pytest.raises(EngineOutOfMemory):
        run_splitting_on_oom(infer, ["a", "huge", "b", "c"], _is_oom)
