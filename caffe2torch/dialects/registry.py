"""What a Caffe dialect is, and how a text prototxt's dialect is told.

A dialect is one Caffe fork's schema plus the layer types that fork registers. Text files name every field,
so a file may use fields of several forks (see parse.py); the dialect still decides what really differs
between forks: the layer types' semantics (DeepLab v1's Interp size rule), enums and defaults, and the
field numbers of binary files. A new fork arrives as a new module that registers its Dialect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message


@dataclass(frozen=True)
class Dialect:
    name: str
    title: str
    net_message: type[Message]
    # Top-level NetParameter fields that hold this fork's layers in its own syntax ("layer" or "layers").
    layer_fields: tuple[str, ...]
    # Layer type strings the fork registers (REGISTER_LAYER_CLASS); V1 enum names come from the schema.
    layer_types: frozenset[str] = field(default_factory=frozenset)
    # Detection tie-break: lower wins when two dialects explain a file equally well.
    priority: int = 100
    # {layer type: {parameter message: {field: value}}}: fields the upgrade chain writes out where a file leaves
    # them unset, for layer types two forks register under one name with different meanings (SegNet's and
    # PSPNet's BN), so that the layer's own parameters say which it is (upgrade.upgrade_fork_param_defaults).
    param_defaults: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)

    @property
    def net_descriptor(self) -> Descriptor:
        return self.net_message.DESCRIPTOR

    @cached_property
    def known_names(self) -> frozenset[str]:
        """Every field name and enum value name of the schema, and every layer type string: what a file can
        use natively in this dialect."""
        names: set[str] = set(self.layer_types)
        seen: set[str] = set()
        stack = [self.net_descriptor]
        while stack:
            message = stack.pop()
            if message.full_name in seen:
                continue
            seen.add(message.full_name)
            for fd in message.fields:
                names.add(fd.name)
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    stack.append(fd.message_type)
                elif fd.type == FieldDescriptor.TYPE_ENUM:
                    names.update(value.name for value in fd.enum_type.values)
        return frozenset(names)


DIALECTS: dict[str, Dialect] = {}


def register_dialect(dialect: Dialect) -> Dialect:
    if dialect.name in DIALECTS:
        raise RuntimeError(f"dialect {dialect.name} registered twice")
    DIALECTS[dialect.name] = dialect
    return dialect


def get_dialect(name: str) -> Dialect:
    if name not in DIALECTS:
        raise KeyError(name)
    return DIALECTS[name]


def dialect_title(name: str) -> str:
    return DIALECTS[name].title if name in DIALECTS else name


def detect_dialect(layer_field: str | None, names_used: Iterable[str]) -> Dialect:
    """The dialect that natively knows the most of the field names, enum names and layer type strings a file
    uses, among those whose syntax the file is written in (`layer {}` or `layers {}`); ties go to the lower
    priority. Names every candidate knows count for all equally, so only what differs between forks decides."""
    used = set(names_used)
    candidates = [d for d in DIALECTS.values() if layer_field is None or layer_field in d.layer_fields]
    if not candidates:
        candidates = list(DIALECTS.values())
    return max(candidates, key=lambda d: (len(used & d.known_names), -d.priority))
