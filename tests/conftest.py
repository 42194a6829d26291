"""Shared fixtures: one background event loop per test module and a scripted fake upstream."""

from __future__ import annotations

import pytest

from harness import FakeUpstream, LoopThread, Proxy


@pytest.fixture(scope="module")
def lt():
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture
def upstream(lt):
    up = FakeUpstream(lt)
    yield up
    up.close()


@pytest.fixture
def proxies():
    """Proxies a test starts (append to the list); all are stopped afterwards."""
    started: list[Proxy] = []
    yield started
    for p in started:
        p.stop()
