"""Launch arguments that win over the parameter file, and only when they are given.

launch_ros hands a ``Node(parameters=[file, {dict}])`` dict to the node as a ``/**`` wildcard
parameter file. rcl merges every parameter file into one table keyed by the section name and
resolves a node's values by walking that table in the order the sections first appeared, so the
node sections of ``config/edge.yaml`` (``/**/camera_sampler:``, ...) came after the ``/**`` of the
arguments and won: ``source:=synthetic:3`` or ``teacher:=tflite:...`` was silently ignored.

Here an argument given on the command line (or by an including launch file) is written into
every section of the parameter file that sets that name (``/**`` when none does), in a second
file passed after it: the same section key in a later file overrides the earlier value, whatever
the order of sections. An argument that was not given is not written, so the parameter file's
value stands, including different values per node (the server's ``device`` in two sections).

The default an argument shows (``ros2 launch ... --show-args``) and takes when not given is the
parameter file's value (:class:`ConfigValue`); while performing that default it records the name
as "not given", which is how :class:`ParameterOverrides` tells the two apart. Values are typed
from the parameter file's value (a string ``"8"`` for an int parameter becomes 8, ``robot1`` for
a list ``[robot1]``), and a value that does not fit is a launch error naming it.

ROS-free apart from ``launch`` itself, and torch-free: the launch files import it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Iterable, Sequence

import yaml
from launch.actions import DeclareLaunchArgument
from launch.launch_context import LaunchContext
from launch.some_substitutions_type import SomeSubstitutionsType
from launch.substitution import Substitution
from launch.substitutions import LaunchConfiguration
from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions

from ams_ros.nodes.common.parameter_files import WILDCARD, dump_parameters
_DEFAULTED = "_ams_ros_defaulted_arguments"  # a launch configuration: names whose default was taken
_cache: dict[str, tuple[float, dict]] = {}


class LaunchParameterError(ValueError):
    """A launch argument whose value does not fit its parameter, or an unreadable parameter file."""


def load_parameter_file(path: str) -> dict[str, dict[str, Any]]:
    """``{section: {name: value}}`` of a ROS 2 parameter file (cached by path and mtime)."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        raise LaunchParameterError(f"config_file '{path}' cannot be read ({exc.strerror}): pass an existing "
                                   f"parameter file, or leave config_file out for the package's own") from None
    hit = _cache.get(path)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise LaunchParameterError(f"config_file '{path}' is not a ROS 2 parameter file (a mapping of node sections)")
    sections = {str(k): dict((v or {}).get("ros__parameters") or {}) for k, v in data.items() if isinstance(v, dict)}
    _cache[path] = (mtime, sections)
    return sections


def sections_setting(sections: dict[str, dict[str, Any]], name: str) -> list[str]:
    """The sections of a parameter file that set ``name`` (``["/**"]`` when none does)."""
    found = [s for s, params in sections.items() if name in params]
    return found or [WILDCARD]


def file_value(sections: dict[str, dict[str, Any]], name: str) -> tuple[bool, Any]:
    """(found, value) of ``name`` in a parameter file: the ``/**`` value, else the first node section's."""
    for section in [WILDCARD, *sections]:
        if name in sections.get(section, {}):
            return True, sections[section][name]
    return False, None


def as_text(value: Any) -> str:
    """A parameter value as a launch argument's text (``true``, ``0.5``, ``[robot1, robot2]``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(as_text(v) for v in value) + "]"
    return "" if value is None else str(value)


def typed(name: str, text: str, like: Any) -> Any:
    """The launch argument ``name:=text`` as a value of the type of ``like`` (the parameter file's
    value); :class:`LaunchParameterError` naming the argument when it does not fit."""
    def refuse(expected: str) -> LaunchParameterError:
        return LaunchParameterError(f"launch argument {name}:={text!r} is not {expected} (the parameter file has "
                                    f"{name}: {as_text(like)!r}): pass {expected}")

    stripped = text.strip()
    if isinstance(like, bool):
        lowered = stripped.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        raise refuse("true or false")
    if isinstance(like, int):
        try:
            return int(stripped)
        except ValueError:
            raise refuse("an integer") from None
    if isinstance(like, float):
        try:
            return float(stripped)
        except ValueError:
            raise refuse("a number") from None
    if isinstance(like, list):
        if stripped.startswith("["):
            try:
                value = yaml.safe_load(stripped)
            except yaml.YAMLError:
                raise refuse("a list such as [a, b]") from None
        else:  # one element: device_ids:=robot1
            value = [stripped] if stripped else []
        if not isinstance(value, list):
            raise refuse("a list such as [a, b]")
        if all(isinstance(v, str) for v in like):
            value = ["" if v is None else str(v) for v in value]
        return value or [""]  # ROS cannot type an empty list: the [""] placeholder of the YAML files
    if isinstance(like, str):
        return text
    value = yaml.safe_load(text) if stripped else ""  # not in the file: as launch_ros would read it
    return "" if value is None else value


def defaulted(context: LaunchContext) -> set[str]:
    """Names of this scope's launch arguments that took their default (were not given)."""
    return set(context.launch_configurations.get(_DEFAULTED, "").split())


class ConfigValue(Substitution):
    """A launch argument's default: the value of parameter ``name`` in the parameter file that the
    launch configuration ``config_file`` names (``fallback`` where the file does not set it).
    Performing it marks ``name`` as not given (see :class:`ParameterOverrides`)."""

    def __init__(self, name: str, fallback: str = "", config_file: SomeSubstitutionsType = None) -> None:
        super().__init__()
        self.name = name
        self.fallback = fallback
        self.config_file = normalize_to_list_of_substitutions(config_file or LaunchConfiguration("config_file"))

    def describe(self) -> str:
        return f"the value of {self.name} in config_file" + (f", else '{self.fallback}'" if self.fallback else "")

    def perform(self, context: LaunchContext) -> str:
        names = defaulted(context) | {self.name}
        context.launch_configurations[_DEFAULTED] = " ".join(sorted(names))
        found, value = file_value(load_parameter_file(perform_substitutions(context, self.config_file)), self.name)
        return as_text(value) if found else self.fallback


class ParameterOverrides(Substitution):
    """The path of a parameter file holding the given launch arguments among ``names``, each in
    every section of ``config_file`` that sets it; pass it after ``config_file`` in ``Node(parameters=
    [...])``. With no argument given it is ``config_file`` itself (nothing to override)."""

    def __init__(self, names: Iterable[str], config_file: SomeSubstitutionsType = None) -> None:
        super().__init__()
        self.names: Sequence[str] = tuple(names)
        self.config_file = normalize_to_list_of_substitutions(config_file or LaunchConfiguration("config_file"))

    def describe(self) -> str:
        return f"config_file with the given arguments among {', '.join(self.names)}"

    def perform(self, context: LaunchContext) -> str:
        path = perform_substitutions(context, self.config_file)
        sections = load_parameter_file(path)
        skip = defaulted(context)
        out: dict[str, dict[str, Any]] = {}
        for name in self.names:
            if name in skip or name not in context.launch_configurations:
                continue
            found, like = file_value(sections, name)
            value = typed(name, context.launch_configurations[name], like if found else None)
            for section in sections_setting(sections, name):
                out.setdefault(section, {})[name] = value
        if not out:
            return path
        # in the temporary folder, as launch_ros writes its own dict parameters
        with tempfile.NamedTemporaryFile("w", prefix="ams_ros_launch_", suffix=".yaml", delete=False) as f:
            f.write(dump_parameters(out))
            return f.name


def config_argument(name: str, description: str, choices: Sequence[str] | None = None,
                    fallback: str = "") -> DeclareLaunchArgument:
    """A launch argument for parameter ``name`` whose default is the parameter file's value."""
    return DeclareLaunchArgument(name, default_value=ConfigValue(name, fallback), description=description,
                                 choices=list(choices) if choices else None)
