"""A sliding window of items with running sums of what they contribute. No I/O.

Diagnosis reads ~30 time-weighted means over its window and token cost four totals over its own,
every tick and for every GPU. Kept as items enter and leave, each costs the same however many
ticks the window holds (300 at 10 ticks a second), instead of a pass over the whole window.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Generic, Hashable, Iterator, Mapping, TypeVar

T = TypeVar("T")
Parts = Mapping[Hashable, float]


class _Sum:
    """For one key: Σ value × weight, Σ weight, and how many items have it."""

    __slots__ = ("_value", "_lost", "weight", "count")

    def __init__(self) -> None:
        self._value = 0.0
        self._lost = 0.0  # what rounding dropped from _value (Neumaier's compensation)
        self.weight = 0.0
        self.count = 0

    @property
    def value(self) -> float:
        return self._value + self._lost

    def add(self, value: float, weight: float, sign: int) -> None:
        # Compensated: once large values have left, the small ones that stay are summed as if
        # from scratch, not buried under the rounding of subtracting the large ones.
        x = sign * value * weight
        total = self._value + x
        if abs(self._value) >= abs(x):
            self._lost += (self._value - total) + x
        else:
            self._lost += (x - total) + self._value
        self._value = total
        self.weight += sign * weight
        self.count += sign


class SlidingWindow(Generic[T]):
    """Items in time order; each has a weight and contributes values by key.

    An item's contributions are kept with it, added as it enters and subtracted as it leaves; a
    key leaves with the last item that has it. Subtracting leaves rounding behind: the value sums
    are compensated, and every sum is rebuilt from the kept contributions once as many items have
    entered as the window holds (amortized O(1) an item), so no drift outlives two windows.
    """

    def __init__(self) -> None:
        self._items: deque[tuple[T, float, Parts]] = deque()
        self._sums: dict[Hashable, _Sum] = {}
        self.weight = 0.0  # of all items, whatever they contribute
        self._entered = 0  # since the sums were last rebuilt

    def __len__(self) -> int:
        return len(self._items)

    @property
    def last(self) -> T:
        return self._items[-1][0]

    def append(self, item: T, weight: float, parts: Parts) -> None:
        self._items.append((item, weight, parts))
        self._entered += 1
        if self._entered >= len(self._items):
            self._rebuild()
        else:
            self._add(weight, parts)

    def expire(self, stale: Callable[[T], bool]) -> None:
        """Drop items from the oldest while ``stale`` says so."""
        items = self._items
        while items and stale(items[0][0]):
            _, weight, parts = items.popleft()
            self._subtract(weight, parts)
        if not items:
            self.clear()

    def clear(self) -> None:
        self._items.clear()
        self._sums.clear()
        self.weight = 0.0
        self._entered = 0

    def recount(self, parts: Callable[[T], Parts]) -> None:
        """Replace every item's contributions (what they are depends on something that changed)."""
        self._items = deque((item, weight, parts(item)) for item, weight, _ in self._items)
        self._rebuild()

    def keys(self) -> Iterator[Hashable]:
        return iter(self._sums)

    def mean(self, key: Hashable) -> float | None:
        """The weighted mean of ``key`` over the items that have it; None where none has."""
        s = self._sums.get(key)
        return s.value / s.weight if s is not None and s.weight > 0 else None

    def total(self, key: Hashable) -> float:
        """Σ value × weight of ``key``."""
        s = self._sums.get(key)
        return s.value if s is not None else 0.0

    def weight_of(self, key: Hashable) -> float:
        """Σ weight of the items that have ``key``."""
        s = self._sums.get(key)
        return s.weight if s is not None else 0.0

    def count(self, key: Hashable) -> int:
        s = self._sums.get(key)
        return s.count if s is not None else 0

    def _rebuild(self) -> None:
        self._sums.clear()
        self.weight = 0.0
        self._entered = 0
        for _, weight, parts in self._items:
            self._add(weight, parts)

    def _add(self, weight: float, parts: Parts) -> None:
        self.weight += weight
        sums = self._sums
        for key, value in parts.items():
            s = sums.get(key)
            if s is None:
                s = sums[key] = _Sum()
            s.add(value, weight, 1)

    def _subtract(self, weight: float, parts: Parts) -> None:
        self.weight -= weight
        sums = self._sums
        for key, value in parts.items():
            s = sums[key]
            if s.count == 1:
                del sums[key]  # exactly gone, not a rounding residue
                continue
            s.add(value, weight, -1)
