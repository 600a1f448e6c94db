"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from reference import FIXTURES


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
