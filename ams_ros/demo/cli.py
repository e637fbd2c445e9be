"""`make demo`: the robot and the base station as two OS processes over DDS (loopback).

By default everything is offline: the robot plays the synthetic world (which shifts domain
during the run), the server's teacher is the world's noisy oracle, and the student starts from
a checkpoint pretrained on the world before its first shift (made once, then cached). An
observer in this process scores the streamed student and a frozen copy against ground truth,
records an overlay video, and writes ``summary.json`` and plots. With ``--robots N`` (issue #16)
N robot processes, each under its own namespace playing its own synthetic world, share the one
base station, and the summary and plots report each robot.
"""

from __future__ import annotations

import argparse
import sys

from ams_ros.core.common.devices import DTYPE_CHOICES, resolve_device
from ams_ros.core.common.devices import DeviceConfig
from ams_ros.core.wire.frame_codec import BatchEncoderConfig
from ams_ros.core.edge.runtimes import RUNTIMES, RuntimeConfig
from ams_ros.core.models.weights import StudentSpec
from ams_ros.core.server.session import SessionConfig
from ams_ros.core.server.trainer_config import TrainerConfig
from ams_ros.core.wire.encodings import ENCODINGS
from ams_ros.nodes.common.local_dds import private_domain_id, use_loopback

_T = TrainerConfig  # the paper's defaults, written once in the core configs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ams_demo", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--duration", type=float, default=150.0, help="seconds of stream time")
    p.add_argument("--source", default="synthetic:0",
                   help="synthetic[:seed], a video file, an image folder (frames named by frame number) or a rosbag")
    p.add_argument("--teacher", default="oracle", help="oracle (synthetic only) | tflite:PATH | torchvision:NAME | checkpoint:PATH | espnetv2:PATH")
    p.add_argument("--label-space", default=StudentSpec.label_space, help="synthetic | cityscapes | voc | camvid")
    p.add_argument("--selected-classes", default="", help="comma-separated class names to keep (default: all)")
    p.add_argument("--student", default=StudentSpec.name, help="student model name")
    p.add_argument("--student-weights", default="",
                   help="student initial weights (checkpoint or tflite:PATH); default: pretrain on the synthetic world (cached)")
    p.add_argument("--width", type=int, default=256, help="frame and model width")
    p.add_argument("--height", type=int, default=128, help="frame and model height")
    p.add_argument("--fps", type=float, default=5.0, help="camera frames per second")
    p.add_argument("--update-period", type=float, default=_T.update_period_s, help="T_update (s)")
    p.add_argument("--horizon", type=float, default=_T.horizon_s, help="T_horizon (s)")
    p.add_argument("--iterations", type=int, default=_T.iterations, help="K iterations per phase")
    p.add_argument("--batch-size", type=int, default=_T.batch_size, help="training mini-batch")
    p.add_argument("--gamma", type=float, default=_T.gamma, help="fraction of parameters per update")
    p.add_argument("--lr", type=float, default=_T.lr, help="Adam learning rate")
    p.add_argument("--encoding", default=SessionConfig.update_encoding, choices=tuple(ENCODINGS), help="update encoding")
    p.add_argument("--bitrate", type=int, default=BatchEncoderConfig.bitrate_bps, help="uplink H.264 target (bits/s)")
    p.add_argument("--device-id", default="robot1", help="robot name (of a one-robot demo)")
    p.add_argument("--robots", type=int, default=1,
                   help="robots sharing the one base station (issue #16): robot1..robotN, each its own process and "
                        "namespace; on the synthetic world robot i plays synthetic:<seed+i-1> (same shift times) with "
                        "its own oracle, a real --source is played by every robot alike")
    p.add_argument("--device", default=DeviceConfig.device,
                   help="torch device of both processes (robot student, server trainer and teacher): auto | cpu | "
                        "cuda | cuda:N; CUDA where torch sees none fails at start-up")
    p.add_argument("--inference-dtype", default=DeviceConfig.inference_dtype, choices=DTYPE_CHOICES,
                   help="robot student inference precision")
    p.add_argument("--inference-backend", default=RuntimeConfig.inference_backend, choices=RUNTIMES,
                   help="where the robot's student runs each frame (auto: the fastest installed)")
    p.add_argument("--train-precision", default=_T.train_precision, choices=DTYPE_CHOICES,
                   help="server training precision (autocast)")
    p.add_argument("--pretrain-steps", type=int, default=300, help="steps of synthetic pretraining when no weights are given")
    p.add_argument("--eval-every", type=int, default=2, help="score every n-th label map (saves CPU)")
    p.add_argument("--cache-dir", default="out/cache", help="where the pretrained synthetic student is cached")
    p.add_argument("--no-video", action="store_true", help="do not record overlay.mp4")
    p.add_argument("--domain-id", type=int, default=None, help="private ROS_DOMAIN_ID (default: derived from the pid)")
    p.add_argument("--unsigned", action="store_true",
                   help="run without signatures (issue #13: by default the demo makes ephemeral server and robot "
                        "keys under OUT/keys and signs updates, batches and snapshot requests)")
    p.add_argument("--rss-every", type=float, default=0.0,
                   help="soak benchmark: sample both processes' RSS every S seconds of stream time "
                        "(rss.json, rss.png, slope in summary.json); 0: off")
    p.add_argument("--rss-fit-from", type=float, default=120.0,
                   help="fit the RSS slope from this stream time on (s), past start-up allocations")
    p.add_argument("--edge-param", action="append", default=[], metavar="NODE.NAME=VALUE",
                   help="set a parameter of an edge node over config/edge.yaml and the demo's values, e.g. "
                        "model_patcher.lost_update_grace_s=2.0 (repeatable; VALUE is read as YAML)")
    p.add_argument("--server-param", action="append", default=[], metavar="NODE.NAME=VALUE",
                   help="the same for a server node, e.g. ams_trainer.gamma=0.1")
    p.add_argument("--quiet", action="store_true", help="progress lines only, no node logs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    try:
        resolve_device(args.device)  # fail here, not in two child processes
    except ValueError as exc:
        print(f"ams_demo: error: {exc}", file=sys.stderr)
        return 2
    # DDS on loopback in a private domain, before rclpy is imported anywhere in this process.
    use_loopback(args.domain_id if args.domain_id is not None else private_domain_id(60, 40))
    from ams_ros.demo.runner import run_demo  # lazy: ROS is imported only once DDS is set to loopback

    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
