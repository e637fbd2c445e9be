"""tools/eval_long_streams.sh (issue #11): the long-stream results in one command. Its dry run
must print commands that ams-eval accepts, in an order that works (labels first, three runs side
by side, then the merge of exactly those three folders, the skip and the analysis)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from ams_ros.core.common.paths import SOURCE_ROOT

from ams_ros.eval.cli import parse_args

ROOT = SOURCE_ROOT


def _dry_run(*args: str, assets: Path) -> list[list[str]]:
    env = {**os.environ, "DRY_RUN": "1", "AMS_ASSETS": str(assets)}
    cp = subprocess.run(["bash", "tools/eval_long_streams.sh", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=60, check=True)
    return [shlex.split(line[2:].removesuffix(" &")) for line in cp.stdout.splitlines() if line.startswith("+ ")]


def test_the_long_stream_script_prints_ams_eval_commands_in_a_working_order(tmp_path):
    cmds = _dry_run("moving", "static", assets=tmp_path)
    parsed = []
    for c in cmds:
        assert c[:3] == ["python", "-m", "ams_ros.eval.cli"], c
        parsed.append(parse_args(c[3:]))  # an unknown flag or a missing argument raises SystemExit
    for stream in ("moving", "static"):
        mine = [a for a in parsed if stream in str(getattr(a, "out", "") or getattr(a, "run", "") or a.runs[0])]
        kinds = [a.cmd for a in mine if a.cmd != "pretrain"]
        assert kinds == ["run"] * 4 + ["merge", "summarize", "summarize", "analyze", "analyze"], (stream, kinds)
        runs = [a for a in mine if a.cmd == "run"]
        assert runs[0].schemes == "none"  # the teacher labels once, before three processes read them
        assert all(r.preset == "cpu-paper-timing" and r.source.startswith("playlist:") for r in runs)
        assert all(r.teacher.startswith(f"tflite:{tmp_path}/") for r in runs)  # assets from AMS_ASSETS
        merge = next(a for a in mine if a.cmd == "merge")
        assert merge.runs == [r.out for r in runs[1:]] and merge.out == f"out/eval/{stream}-cpu-paper-timing"
        schemes = ",".join(r.schemes for r in runs[1:]).split(",")
        assert sorted(schemes) == sorted(["remote_tracking", "ams", "one_time", "jit", "shadowtutor", "jit:lr=0.001"])
        assert [a.skip_s for a in mine if a.cmd == "analyze"] == [0.0, 250.0]


def test_the_long_stream_script_refuses_an_unknown_stream_naming_the_valid_ones():
    cp = subprocess.run(["bash", "tools/eval_long_streams.sh", "bogus"], cwd=ROOT, capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 2 and "unknown argument 'bogus' (streams: static, moving" in cp.stderr
