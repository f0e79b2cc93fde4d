"""Bounded, strict YAML for configs, sweeps and ``--set`` values.

``yaml.safe_load`` never runs code, but it lets the last of two equal keys win silently, and
a few hundred bytes of nested aliases (a "billion laughs") expand into a structure that every
later walk over the config (validation, hashing, JSON) takes minutes and gigabytes over.
:func:`load_yaml` refuses duplicate keys, inputs over :data:`MAX_BYTES` and documents whose
aliases expand to more than :data:`MAX_NODES` nodes, each with a :class:`ConfigError`
naming the source (and line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from sslpoison.errors import ConfigError, one_line

#: The largest YAML input read (configs and sweeps are a few kilobytes).
MAX_BYTES = 1 << 20
#: The most nodes a document may hold with every alias expanded.
MAX_NODES = 100_000

__all__ = ["MAX_BYTES", "MAX_NODES", "load_yaml", "read_yaml"]


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a key written twice in one mapping (a key that overrides
    one merged in with ``<<`` is not a repeat)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: SafeLoader refuses it below
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: Node) -> int:
    """The node count of ``root`` with every alias expanded (a node reached twice counts
    twice), computed without expanding; anything past :data:`MAX_NODES` (or a node that
    contains itself) is ``MAX_NODES + 1``."""
    too_many = MAX_NODES + 1
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[Node] = [root]
    while stack:
        node = stack[-1]
        if id(node) in sizes:
            stack.pop()
            continue
        children = _children(node)
        if id(node) not in open_:
            open_.add(id(node))
            for child in children:
                if id(child) in sizes:
                    continue
                if id(child) in open_:  # a cycle: infinitely large once expanded
                    sizes[id(node)] = too_many
                    open_.discard(id(node))
                    break
                stack.append(child)
            continue
        stack.pop()
        open_.discard(id(node))
        sizes[id(node)] = min(too_many, 1 + sum(sizes.get(id(c), too_many) for c in children))
    return sizes[id(root)]


def _describe(error: yaml.YAMLError) -> str:
    """A YAML error as ``line L, column C: problem`` (without the echoed source text)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f"{error.context}, " if error.context else ""
        return one_line(f"{where}{context}{error.problem}")
    return one_line(error)


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document from ``text`` (``source`` names it in errors: a file, or
    ``--set 'key=value'``).

    Raises:
        ConfigError: not valid YAML, a repeated key, more than :data:`MAX_BYTES`, or more
            than :data:`MAX_NODES` nodes once aliases are expanded.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_BYTES >> 10} KiB, not read")
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_NODES:
            raise ConfigError(
                f"{source}: more than {MAX_NODES} values once its aliases (*name) are "
                "expanded; refused"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({_describe(e)})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """:func:`load_yaml` of a file, read at most :data:`MAX_BYTES` (+1) bytes of it.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8, or not valid (see above).
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"file not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder, not a YAML file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_BYTES >> 10} KiB, not read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    return load_yaml(text, str(p))
