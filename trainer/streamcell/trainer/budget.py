"""The time budget's clock: this process's CPU time per torch thread, with a wall-clock cap.

A budget counted on the wall clock trains less when other work shares the
machine, so the same command gave different models at different loads. This
clock counts the CPU time the run itself got, divided by its torch threads
(on an idle machine it runs at the wall clock's pace): a busy machine makes a
run slower, not different. The wall clock still caps it at
:data:`WALL_FACTOR` times the budget, so a starved run ends all the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

WALL_FACTOR = 3.0


def budget_clock() -> float:
    """Seconds as the budget counts them (see the module doc)."""
    return time.process_time() / max(1, torch.get_num_threads())


@dataclass(frozen=True)
class Deadline:
    """When a run (or one candidate's share of it) must stop, on both clocks."""

    budget: float  # a value of ``clock``
    wall: float  # time.monotonic() value
    # budget_clock, or one that also counts work done in other processes (Ray workers).
    clock: Callable[[], float] = field(default=budget_clock, compare=False)

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = budget_clock) -> Deadline:
        seconds = max(seconds, 0.0)
        return cls(clock() + seconds, time.monotonic() + WALL_FACTOR * seconds, clock)

    def left(self) -> float:
        """Budget seconds left (0 once either clock has passed its end)."""
        if time.monotonic() >= self.wall:
            return 0.0
        return max(self.budget - self.clock(), 0.0)

    def would_pass(self, pace: float) -> bool:
        """Whether work taking ``pace`` budget seconds would end past the deadline."""
        return self.clock() + pace > self.budget or time.monotonic() + pace > self.wall
