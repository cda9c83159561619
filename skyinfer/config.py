"""A YAML document that remembers where every value came from.

Scenario files are parsed into :class:`Node` trees. Each node knows its file,
line and key path (``constellation.walker[0].altitude_km``) so that every
mistake can be reported as ``FILE:LINE: key.path: what is wrong`` and unknown
keys are refused rather than silently ignored. PyYAML is used (not TOML)
because it exposes those line marks and because scenario files are edited by
hand, with comments and long lists of stations.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from skyinfer.errors import InputError


@dataclass(frozen=True, slots=True)
class Node:
    """One value of a YAML document with its origin.

    ``value`` is a ``dict[str, Node]`` for a mapping, a ``list[Node]`` for a
    sequence and a plain Python scalar otherwise.
    """

    value: Any
    path: str
    file: str
    line: int

    # -- reporting ---------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.path or '<document>'}"

    def error(self, message: str) -> InputError:
        return InputError(f"{self.where}: {message}")

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in this document are resolved against."""
        return Path(self.file).resolve().parent

    def resolve_path(self) -> Path:
        """This string value as a path, relative to the document's directory; must exist."""
        p = Path(self.as_str())
        if not p.is_absolute():
            p = self.base_dir / p
        if not p.exists():
            raise self.error(f"file not found: {p}")
        return p

    # -- structure ---------------------------------------------------------------
    def is_mapping(self) -> bool:
        return isinstance(self.value, dict)

    def is_sequence(self) -> bool:
        return isinstance(self.value, list)

    def mapping(self, *, required: Iterable[str] = (), optional: Iterable[str] = ()) -> dict[str, Node]:
        """The node as a mapping whose keys must be among ``required`` + ``optional``."""
        if not isinstance(self.value, dict):
            raise self.error(f"expected a mapping, got {_kind(self.value)}")
        req = list(required)
        allowed = set(req) | set(optional)
        for key, child in self.value.items():
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise child.error(f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}")
        for key in req:
            if key not in self.value:
                raise self.error(f"missing required key {key!r}")
        return dict(self.value)

    def sequence(self) -> list[Node]:
        if not isinstance(self.value, list):
            raise self.error(f"expected a list, got {_kind(self.value)}")
        return list(self.value)

    def sequence_or_one(self) -> list[Node]:
        """A list, or a single value standing for a list of one."""
        return list(self.value) if isinstance(self.value, list) else [self]

    # -- scalars -----------------------------------------------------------------
    def as_str(self) -> str:
        if isinstance(self.value, str):
            return self.value
        if isinstance(self.value, bool | dict | list) or self.value is None:
            raise self.error(f"expected a string, got {_kind(self.value)}")
        return str(self.value)

    def as_float(self, *, min_value: float | None = None, max_value: float | None = None) -> float:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.error(f"expected a number, got {_kind(v)}")
        f = float(v)
        if not math.isfinite(f):
            raise self.error(f"expected a finite number, got {v!r}")
        if min_value is not None and f < min_value:
            raise self.error(f"must be >= {min_value:g}, got {v!r}")
        if max_value is not None and f > max_value:
            raise self.error(f"must be <= {max_value:g}, got {v!r}")
        return f

    def as_int(self, *, min_value: int | None = None, max_value: int | None = None) -> int:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(f"expected an integer, got {_kind(v)}")
        if min_value is not None and v < min_value:
            raise self.error(f"must be >= {min_value}, got {v}")
        if max_value is not None and v > max_value:
            raise self.error(f"must be <= {max_value}, got {v}")
        return int(v)

    def as_bool(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.error(f"expected true or false, got {_kind(self.value)}")
        return self.value

    def plain(self) -> Any:
        """The value with all Node wrappers removed."""
        if isinstance(self.value, dict):
            return {k: n.plain() for k, n in self.value.items()}
        if isinstance(self.value, list):
            return [n.plain() for n in self.value]
        return self.value


def _kind(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"a boolean ({v!r})"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, int | float):
        return f"a number ({v!r})"
    return f"{type(v).__name__} {v!r}"


def _child_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def _convert(node: yaml.Node, path: str, file: str, constructor: yaml.SafeLoader) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise InputError(f"{file}:{key_node.start_mark.line + 1}: {path or '<document>'}: "
                                 f"keys must be strings, got {key!r}")
            if key in out:
                raise InputError(f"{file}:{key_node.start_mark.line + 1}: {_child_path(path, key)}: "
                                 f"duplicate key")
            out[key] = _convert(value_node, _child_path(path, key), file, constructor)
        return Node(out, path, file, line)
    if isinstance(node, yaml.SequenceNode):
        items = [_convert(v, _child_path(path, i), file, constructor) for i, v in enumerate(node.value)]
        return Node(items, path, file, line)
    return Node(constructor.construct_object(node, deep=True), path, file, line)


def parse_yaml(text: str, file: str) -> Node:
    """Parse YAML ``text`` (named ``file`` in messages) into a :class:`Node` tree."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return Node({}, "", file, 1)
            return _convert(root, "", file, loader)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise InputError(f"{file}:{line}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{file}: invalid YAML: {exc}") from None


def load_yaml(path: str | Path) -> Node:
    """Read and parse a YAML file; a missing or unreadable file is an :class:`InputError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read: {exc}") from None
    return parse_yaml(text, str(p))
