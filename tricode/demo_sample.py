"""A small inventory module: the sample file that `tricode demo` completes.

The line `# demo: complete here` marks the cursor; the demo removes it and asks the daemon for the
body of `inventory_value` (a plain Python file, not part of any benchmark).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 0
    tags: list[str] = field(default_factory=list)

    def total(self) -> float:
        return self.price * self.quantity


def inventory_value(items: list[Item]) -> float:
    """The total value of all items in stock."""
    # demo: complete here


def most_valuable(items: list[Item]) -> Item | None:
    """The item with the highest total value, or None for an empty list."""
    return max(items, key=lambda item: item.total(), default=None)


def restock(items: list[Item], name: str, amount: int) -> None:
    for item in items:
        if item.name == name:
            item.quantity += amount
            return
    raise KeyError(name)
