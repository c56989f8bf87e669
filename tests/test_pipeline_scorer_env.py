"""The engine's processes start without thread-count variables that break vLLM's CPU binding."""

from __future__ import annotations

import logging
import os

from pipeline.scorer import THREADS_BIND_ENV, cpu_engine_env


def test_mkl_threads_are_unset_while_the_engine_starts_on_cpu(monkeypatch, caplog):
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    with caplog.at_level(logging.WARNING, logger="pipeline.scorer"), cpu_engine_env(True):
        assert "MKL_NUM_THREADS" not in os.environ
    assert os.environ["MKL_NUM_THREADS"] == "2"
    assert "MKL_NUM_THREADS=2 is unset for the vLLM engine" in caplog.text


def test_the_worker_is_bound_to_every_allowed_core_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv(THREADS_BIND_ENV, raising=False)
    allowed = sorted(os.sched_getaffinity(0))
    with cpu_engine_env(True):
        assert os.environ[THREADS_BIND_ENV] == ",".join(map(str, allowed))
    assert THREADS_BIND_ENV not in os.environ

    with cpu_engine_env(True, bind_all_cores=False):
        assert THREADS_BIND_ENV not in os.environ

    monkeypatch.setenv(THREADS_BIND_ENV, "0")
    with cpu_engine_env(True):
        assert os.environ[THREADS_BIND_ENV] == "0"
    assert os.environ[THREADS_BIND_ENV] == "0"


def test_nothing_changes_off_cpu_or_when_unset(monkeypatch, caplog):
    monkeypatch.delenv(THREADS_BIND_ENV, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "4")
    with caplog.at_level(logging.WARNING, logger="pipeline.scorer"), cpu_engine_env(False):
        assert os.environ["MKL_NUM_THREADS"] == "4"
    monkeypatch.delenv("MKL_NUM_THREADS")
    with cpu_engine_env(False):
        assert THREADS_BIND_ENV not in os.environ
    with cpu_engine_env(True, bind_all_cores=False):
        assert "MKL_NUM_THREADS" not in os.environ
    assert "MKL_NUM_THREADS" not in os.environ
    assert caplog.text == ""
