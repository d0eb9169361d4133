"""Reconnect delays shared by the sources and the uplink."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter, capped at ``max_s``.

    The jitter spreads out cameras that lost the same network at the same moment,
    so they do not all hit the recorder or the cloud again in lockstep.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    """the delay is drawn from [(1 - jitter) x d, d]"""

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"backoff: need 0 < initial_s ≤ max_s, got {self}")
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff: need multiplier ≥ 1 and 0 ≤ jitter ≤ 1, got {self}")

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before reconnect attempt ``attempt`` (0 = the first after a failure)."""
        # Cap the exponent too: multiplier ** 2000 overflows a float.
        ceiling = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        return ceiling * (1.0 - self.jitter * (rng or random).random())
