"""Shared fixtures. Ray tests use one session-scoped local Ray (see tests that request it)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
                   ) -> None:
    """Tests never read or write the user's real cache of generated data sets."""
    monkeypatch.setenv("RPU_RAY_CACHE", str(tmp_path_factory.getbasetemp() / "rpu-ray-cache"))
