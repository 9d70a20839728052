"""Fixtures shared by the runner and adapter tests."""

from __future__ import annotations

import pytest

from .helpers import write_mrseg_set


@pytest.fixture()
def mrseg_set(tmp_path):
    """(JSONL path, image root) of the two-conversation set in ``helpers``."""
    return write_mrseg_set(tmp_path)
