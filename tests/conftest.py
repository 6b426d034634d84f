"""Shared fixtures for atoll's tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import transaction

# tests/ holds helper modules (postgres_support) that test packages import by name.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _clean_transaction():
    """Each test starts and ends with no transaction in progress on this thread."""
    transaction.abort()
    yield
    transaction.abort()
