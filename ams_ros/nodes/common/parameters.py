"""Declared ROS parameters, generated from the core config dataclasses, with run-time changes.

Each node lists its parameters as :class:`Param` specs. Those that configure an algorithm come
from a field of a core config (:func:`from_field`), so the default and the description are
written once, in ``ams_ros/core``; plumbing-only ones (topics, QoS depths) are written here in
the node. :class:`NodeParameters` declares them all and then:

- refuses changes to parameters that only take effect at start-up (read-only descriptors: rclpy
  answers "Trying to set a read-only parameter"), so ``ros2 param set`` never reports success
  for a value the node then ignores;
- validates a change to a *dynamic* parameter (its type, its choices, the node's own check)
  and hands it to the node's ``on_change`` callback, which applies it (a new learning rate for
  the next phase, a new bitrate for the next batch) or raises ValueError, whose text is the
  reason ``ros2 param set`` prints.

``config/*.yaml`` is generated from the same specs (``python -m ams_ros.nodes.config_files``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Sequence

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from ams_ros.core.common.config import check_choice, knob_info


@dataclasses.dataclass(frozen=True)
class Param:
    """One declared parameter: name, default (its type is the parameter's), description.

    ``dynamic`` parameters may change at run time (applied by the node's ``on_change``);
    the others are read-only after start-up. ``choices`` lists the valid values of a string.
    ``shared`` marks a value every node of the process takes from the YAML's ``/**`` section
    (``device_id``, the student): one value per process, written once.
    """

    name: str
    default: Any
    description: str
    dynamic: bool = False
    choices: tuple[str, ...] = ()
    shared: bool = False

    def descriptor(self) -> ParameterDescriptor:
        text = self.description
        if self.choices:
            text += f" (one of: {' | '.join(self.choices)})"
        text += "" if self.dynamic else " [read-only: set at start-up]"
        return ParameterDescriptor(description=text, read_only=not self.dynamic,
                                   additional_constraints=("one of: " + ", ".join(self.choices)) if self.choices else "")


def ros_value(value: Any) -> Any:
    """A config value as a ROS parameter value: tuples become lists, an empty string list the
    ``[""]`` placeholder (ROS cannot type an empty list), ``None`` an empty string."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list) and not value:
        return [""]
    return value


def from_field(config: type, field: str, *, name: str | None = None, index: int | None = None,
               dynamic: bool = False, shared: bool = False, description: str | None = None) -> Param:
    """The parameter for field ``field`` of core config dataclass ``config`` (its default, help
    and choices). ``index`` picks one element of a tuple field (``input_size`` -> width, height)."""
    default, help_text, choices = knob_info(config, field)
    if index is not None:
        default = default[index]
    text = description or help_text
    if not text:
        raise ValueError(f"{config.__name__}.{field} has no help text: declare it with core.config.knob()")
    return Param(name or field, ros_value(default), text, dynamic=dynamic, choices=choices, shared=shared)


def string_list(values: Sequence[str] | None) -> list[str]:
    """A YAML string list without the [""] placeholder ROS needs to type an empty list."""
    return [v for v in (values or []) if v]


class NodeParameters(Mapping):
    """The declared parameters of one node, read as a mapping (``params["gamma"]``).

    ``on_change(changes)`` receives ``{name: new value}`` of dynamic parameters that passed the
    type and choice checks, before they take effect; it applies them or raises ValueError to
    refuse them all (the reason is returned to the caller of ``set_parameters``).
    """

    def __init__(self, node: Node, specs: Sequence[Param],
                 on_change: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._node = node
        self._specs = {p.name: p for p in specs}
        if len(self._specs) != len(specs):
            raise ValueError(f"{node.get_name()}: a parameter is declared twice")
        self._on_change = on_change
        for p in specs:
            node.declare_parameter(p.name, p.default, p.descriptor())
        self._values = {p.name: node.get_parameter(p.name).value for p in specs}
        for p in specs:  # a YAML or command-line value outside the choices is a start-up error
            check_choice(f"{node.get_name()}.{p.name}", self._values[p.name], p.choices)
        node.add_on_set_parameters_callback(self._on_set)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def specs(self) -> dict[str, Param]:
        return dict(self._specs)

    def _on_set(self, params: list[Parameter]) -> SetParametersResult:
        changes: dict[str, Any] = {}
        for prm in params:
            spec = self._specs.get(prm.name)
            if spec is None:  # rclpy's own (use_sim_time) or another helper's
                continue
            if not spec.dynamic:
                return SetParametersResult(successful=False, reason=(
                    f"{prm.name} is read-only: it takes effect at start-up; restart the node with the new value"))
            if type(prm.value) is not type(spec.default) and not (
                    isinstance(spec.default, float) and type(prm.value) is int):
                return SetParametersResult(successful=False, reason=(
                    f"{prm.name} takes a {type(spec.default).__name__}, got {prm.value!r}"))
            value = float(prm.value) if isinstance(spec.default, float) else prm.value
            try:
                check_choice(prm.name, value, spec.choices)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            changes[prm.name] = value
        if changes and self._on_change is not None:
            try:
                self._on_change(dict(changes))
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        self._values.update(changes)
        if changes:
            self._node.get_logger().info(
                "parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
        return SetParametersResult(successful=True)

