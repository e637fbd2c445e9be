"""Locate the shared real-world assets (weights, footage) that are never part of the project.

Looked up in ``$AMS_ASSETS`` first, then ``../shared/assets`` beside the repository root.
Tests that need them skip cleanly when they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

from ams_ros.core.common.paths import SOURCE_ROOT


def assets_dir() -> Path | None:
    """The assets folder, or None when no copy is reachable."""
    env = os.environ.get("AMS_ASSETS")
    candidates = [Path(env)] if env else []
    candidates.append(SOURCE_ROOT.parent / "shared" / "assets")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def asset_path(relative: str) -> Path | None:
    """Path of one asset (e.g. ``models/student/deeplabv3_mnv2_pascal_quant.tflite``) or None."""
    root = assets_dir()
    if root is None:
        return None
    p = root / relative
    return p if p.exists() else None


def require_asset(relative: str) -> Path:
    """Like :func:`asset_path` but raises a FileNotFoundError that says what to do."""
    p = asset_path(relative)
    if p is None:
        raise FileNotFoundError(
            f"asset '{relative}' not found: set AMS_ASSETS to the folder holding it "
            f"(e.g. ../shared/assets) or pass the file's path explicitly"
        )
    return p
