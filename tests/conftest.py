"""Shared fixtures: one background event loop per test module and a scripted fake upstream."""

from __future__ import annotations

import pytest

from harness import FakeUpstream, LoopThread


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
