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


@pytest.fixture
def one_cpu_thread():
    """Tiny models train as fast on one thread, and far faster on a shared, busy CPU where
    OpenMP threads would wait on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
