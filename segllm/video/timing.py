"""Where the time of a video run goes: seconds added up per stage."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator


class StageTimer:
    """Seconds per named stage, added up over every ``with timer.stage(name)`` block."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)
