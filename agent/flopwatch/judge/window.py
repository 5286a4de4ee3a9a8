"""A sliding window of items with running sums of what they contribute. No I/O.

Diagnosis reads ~30 time-weighted means over its window at every evaluation, for every GPU. Kept
as items enter and leave, each costs the same however many ticks the window holds (300 at 10
ticks a second), instead of a pass over the whole window.

The sums are exact: each contribution (value × weight) is scaled by 2**52 to an integer when its
item enters, and Python's integers neither round nor overflow, so subtracting what entered leaves
exactly what stays (large values that left bury nothing), with no compensation to compute and
nothing to rebuild. 2**52 keeps every float of 1 and above whole, and smaller ones to 2**-53.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Generic, Hashable, Iterator, Mapping, TypeVar

T = TypeVar("T")
Parts = Mapping[Hashable, float]
_SCALE = 2**52


class _Sum:
    """For one key: Σ value × weight and Σ weight (both scaled), and how many items have it."""

    __slots__ = ("value", "weight", "count")

    def __init__(self, value: int, weight: int) -> None:
        self.value = value
        self.weight = weight
        self.count = 1


class SlidingWindow(Generic[T]):
    """Items in time order; each has a weight and contributes values by key.

    An item's contributions are kept with it, added as it enters and subtracted as it leaves; a
    key leaves with the last item that has it.
    """

    def __init__(self) -> None:
        self._items: deque[tuple[T, int, dict[Hashable, int]]] = deque()
        self._sums: dict[Hashable, _Sum] = {}
        self._weight = 0  # of all items, whatever they contribute (scaled)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def first(self) -> T:
        return self._items[0][0]

    @property
    def last(self) -> T:
        return self._items[-1][0]

    @property
    def weight(self) -> float:
        return self._weight / _SCALE

    def append(self, item: T, weight: float, parts: Parts) -> None:
        self._enter(item, round(weight * _SCALE), weight * _SCALE, parts)

    def expire(self, stale: Callable[[T], bool]) -> None:
        """Drop items from the oldest while ``stale`` says so."""
        items = self._items
        sums = self._sums
        while items and stale(items[0][0]):
            _, weight, scaled = items.popleft()
            self._weight -= weight
            # Inline, as in _enter: this runs for every key of every item that leaves.
            for key, value in scaled.items():
                s = sums[key]
                if s.count == 1:
                    del sums[key]
                else:
                    s.value -= value
                    s.weight -= weight
                    s.count -= 1

    def clear(self) -> None:
        self._items.clear()
        self._sums.clear()
        self._weight = 0

    def recount(self, parts: Callable[[T], Parts]) -> None:
        """Replace every item's contributions (what they are depends on something that changed)."""
        items = [(item, weight) for item, weight, _ in self._items]
        self.clear()
        for item, weight in items:
            self._enter(item, weight, float(weight), parts(item))

    def keys(self) -> Iterator[Hashable]:
        return iter(self._sums)

    def mean(self, key: Hashable) -> float | None:
        """The weighted mean of ``key`` over the items that have it; None where none has."""
        s = self._sums.get(key)
        return s.value / s.weight if s is not None and s.weight > 0 else None

    def total(self, key: Hashable) -> float:
        """Σ value × weight of ``key``."""
        s = self._sums.get(key)
        return s.value / _SCALE if s is not None else 0.0

    def weight_of(self, key: Hashable) -> float:
        """Σ weight of the items that have ``key``."""
        s = self._sums.get(key)
        return s.weight / _SCALE if s is not None else 0.0

    def _enter(self, item: T, weight: int, scale: float, parts: Parts) -> None:
        """Add an item of ``weight`` (scaled): each part × ``scale`` (weight × 2**52), made whole."""
        self._weight += weight
        sums = self._sums
        scaled = {}
        # One loop, no helper per key: this runs for every key of every item that enters.
        for key, value in parts.items():
            try:
                contribution = round(value * scale)
            except (ValueError, OverflowError):  # NaN or infinite: the item does not know this key
                continue
            scaled[key] = contribution
            s = sums.get(key)
            if s is None:
                sums[key] = _Sum(contribution, weight)
            else:
                s.value += contribution
                s.weight += weight
                s.count += 1
        self._items.append((item, weight, scaled))
