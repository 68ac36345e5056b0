"""Fixtures of the end-to-end tests (their helpers are tests/support/chord_cli.py)."""

import pytest


@pytest.fixture(scope="session")
def base_cache(tmp_path_factory):
    """One base-model cache for the whole session: every e2e run starts from the same base."""
    return tmp_path_factory.mktemp("base-cache")
