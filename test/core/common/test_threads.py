"""The torch thread count the nodes choose: what the user asked for, else every core but the
reserved ones, and torch's own choice when OMP_NUM_THREADS says the user decided."""

from __future__ import annotations

import pytest
import torch

from ams_ros.core.common import threads


@pytest.fixture(autouse=True)
def _restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_an_explicit_count_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads.set_torch_threads(1, reserve=1) == 1


def test_auto_leaves_the_reserved_cores_but_keeps_one(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 3)
    assert threads.set_torch_threads(0, reserve=1) == 2
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    assert threads.set_torch_threads(0, reserve=1) == 1


def test_auto_defers_to_omp_num_threads_and_reserve_0_keeps_torch_default(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.set_torch_threads(0, reserve=1) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.set_torch_threads(0) == 1  # reserve 0: nothing to leave, torch's choice stands
