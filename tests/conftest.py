"""Fixtures shared by the test files."""

from __future__ import annotations

import pytest
from training import FakeImages


@pytest.fixture(scope="module")
def data() -> dict:
    return {
        "train": FakeImages(48, seed=0),
        "val": FakeImages(16, seed=1),
        "test": FakeImages(16, seed=2),
    }
