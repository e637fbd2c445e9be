"""Declaring a setting once: a dataclass field with its default, its help text and its choices.

Every knob of the system is a field of a core config dataclass (``TrainerConfig``,
``SessionConfig``, ``RateControlConfig``, ...). The ROS nodes generate their declared
parameters from these fields, ``ams-eval``'s presets and the demo take their defaults from
them, and ``config/*.yaml`` is generated from the nodes' parameters: so a default lives in one
place, and its description travels with it to ``ros2 param describe``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence


def knob(default: Any, help: str, *, choices: Sequence[str] = ()) -> Any:
    """A dataclass field with a default, the help text the parameter shows, and allowed values."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("knob defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={"help": help, "choices": tuple(choices)})


def knob_info(cls: type, name: str) -> tuple[Any, str, tuple[str, ...]]:
    """(default, help, choices) of field ``name`` of the dataclass ``cls``; KeyError names the fields."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise KeyError(f"{cls.__name__} has no field '{name}' (fields: {', '.join(fields)})")
    f = fields[name]
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    else:
        raise ValueError(f"{cls.__name__}.{name} has no default")
    return default, str(f.metadata.get("help", "")), tuple(f.metadata.get("choices", ()))


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """ValueError naming the value, the valid choices and the setting when ``value`` is not one of them."""
    if choices and value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")
