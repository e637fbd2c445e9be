"""ROS 2 parameter files (``--params-file``, ``Node(parameters=[...])``) written from Python.

rcl's YAML parser rejects anchors and aliases, which PyYAML emits when one object appears twice
(the same list in two node sections): every writer here dumps without them. ``"/**/name"``
matches node ``name`` under any namespace (robots run under ``/<device_id>``), ``"/**"`` every
node. Free of rclpy and launch: the demo, the tests and the launch helpers all write through it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

WILDCARD = "/**"


class NoAliasDumper(yaml.SafeDumper):
    """A safe dumper that writes a repeated object again instead of an alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def section_key(node: str) -> str:
    """``"camera_sampler"`` -> ``"/**/camera_sampler"``; keys that start with ``/`` stay as they are."""
    return node if node.startswith("/") else f"{WILDCARD}/{node}"


def dump_parameters(sections: dict[str, dict[str, Any]]) -> str:
    """``{node or section: {name: value}}`` as the text of a parameter file."""
    data = {section_key(node): {"ros__parameters": params} for node, params in sections.items()}
    return yaml.dump(data, Dumper=NoAliasDumper, sort_keys=False)


def write_parameter_file(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write ``{node or section: {name: value}}`` to ``path`` (folders created); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_parameters(sections))
    return path


def read_parameter_file(path: Path) -> dict[str, dict[str, Any]]:
    """``{section: {name: value}}`` of a parameter file."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    return {str(k): dict((v or {}).get("ros__parameters") or {}) for k, v in data.items() if isinstance(v, dict)}


def merge_parameter_files(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """The files read in order into one ``{section: {name: value}}``, a later file's value of a name in a
    section replacing an earlier one's: what rcl makes of ``--params-file a --params-file b``."""
    merged: dict[str, dict[str, Any]] = {}
    for path in paths:
        for section, params in read_parameter_file(path).items():
            merged.setdefault(section, {}).update(params)
    return merged


def write_or_check(files: dict[Path, str], check: bool, regenerate: str) -> int:
    """Write generated ``files`` (path: text), or with ``check`` return 1 naming those that differ
    and the command ``regenerate`` that rewrites them."""
    stale = []
    for path, text in files.items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run {regenerate}", file=sys.stderr)
        return 1
    return 0
