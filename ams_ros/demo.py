"""`make demo`: the robot and the base station as two OS processes over DDS (loopback).

By default everything is offline: the robot plays the synthetic world (which shifts domain
during the run), the server's teacher is the world's noisy oracle, and the student starts from
a checkpoint pretrained on the world before its first shift (made once, then cached). An
observer in this process scores the streamed student and a frozen copy against ground truth,
records an overlay video, and writes ``summary.json`` and plots.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ams_demo", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--duration", type=float, default=150.0, help="seconds of stream time")
    p.add_argument("--source", default="synthetic:0",
                   help="synthetic[:seed], a video file, an image folder (frames named by frame number) or a rosbag")
    p.add_argument("--teacher", default="oracle", help="oracle (synthetic only) | tflite:PATH | torchvision:NAME | checkpoint:PATH")
    p.add_argument("--label-space", default="synthetic", help="synthetic | cityscapes | voc | camvid")
    p.add_argument("--selected-classes", default="", help="comma-separated class names to keep (default: all)")
    p.add_argument("--student", default="deeplabv3_mobilenet_v2", help="student model name")
    p.add_argument("--student-weights", default="",
                   help="student initial weights (checkpoint or tflite:PATH); default: pretrain on the synthetic world (cached)")
    p.add_argument("--width", type=int, default=256, help="frame and model width")
    p.add_argument("--height", type=int, default=128, help="frame and model height")
    p.add_argument("--fps", type=float, default=5.0, help="camera frames per second")
    p.add_argument("--update-period", type=float, default=10.0, help="T_update (s)")
    p.add_argument("--horizon", type=float, default=240.0, help="T_horizon (s)")
    p.add_argument("--iterations", type=int, default=20, help="K iterations per phase")
    p.add_argument("--batch-size", type=int, default=8, help="training mini-batch")
    p.add_argument("--gamma", type=float, default=0.05, help="fraction of parameters per update")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--encoding", default="paper_gzip_fp16", help="update encoding")
    p.add_argument("--bitrate", type=int, default=200_000, help="uplink H.264 target (bits/s)")
    p.add_argument("--device-id", default="robot1", help="robot name")
    p.add_argument("--pretrain-steps", type=int, default=300, help="steps of synthetic pretraining when no weights are given")
    p.add_argument("--eval-every", type=int, default=2, help="score every n-th label map (saves CPU)")
    p.add_argument("--cache-dir", default="out/cache", help="where the pretrained synthetic student is cached")
    p.add_argument("--no-video", action="store_true", help="do not record overlay.mp4")
    p.add_argument("--domain-id", type=int, default=None, help="private ROS_DOMAIN_ID (default: derived from the pid)")
    p.add_argument("--quiet", action="store_true", help="progress lines only, no node logs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # DDS on loopback in a private domain, before rclpy is imported anywhere in this process.
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(args.domain_id if args.domain_id is not None else 60 + os.getpid() % 40)
    from ams_ros.demo_runner import run_demo

    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
