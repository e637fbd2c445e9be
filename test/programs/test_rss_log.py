"""The soak benchmark's memory log (issue #13): samples on a stream-time period, a slope fit
that ignores start-up, and a process that has exited reads as missing, not as zero."""

import json
import os
import subprocess
import sys

import pytest

from ams_ros.demo.rss import RssLog, process_rss_mib, slope_mib_per_hour


def test_slope_ignores_samples_before_fit_from():
    t = [0, 30, 3600, 7200, 10800]
    mib = [100.0, 900.0, 1010.0, 1020.0, 1030.0]  # start-up jump, then 10 MiB/h
    assert slope_mib_per_hour(t, mib, fit_from_s=3600) == pytest.approx(10.0, rel=1e-6)
    assert slope_mib_per_hour(t, mib, fit_from_s=0) > 50.0


def test_slope_needs_three_samples():
    assert slope_mib_per_hour([0, 30], [1.0, 2.0]) is None


def test_samples_once_per_period_of_stream_time(tmp_path):
    log = RssLog({"me": os.getpid()}, every_s=30.0, fit_from_s=0.0)
    taken = [log.maybe_sample(t) for t in (0.0, 10.0, 29.9, 30.0, 31.0, 95.0)]
    assert taken == [True, False, False, True, False, True]
    assert log.t == [0.0, 30.0, 95.0]
    assert all(v > 10.0 for v in log.mib["me"])  # this interpreter holds more than 10 MiB
    summary = log.write(tmp_path)
    assert summary["samples"] == 3 and summary["me"]["slope_mib_per_hour"] is not None
    assert json.loads((tmp_path / "rss.json").read_text())["t"] == [0.0, 30.0, 95.0]


def test_an_exited_process_reads_as_missing():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert process_rss_mib(proc.pid) is None


def test_a_period_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="every_s=0"):
        RssLog({"me": os.getpid()}, every_s=0)
