"""Writes docs/reference.md, the config reference, from the pydantic models themselves.

It walks :class:`~sslpoison.experiment.config.ExperimentConfig` and every config class nested
in it, then the registries (``ATTACKS``, ``DEFENSES``, ``DETECTORS``, ``METHODS`` and CLIP's
arguments) for the per-name sections: each field with its type, its default and what it
means (its ``Field(description=...)``, else the comment beside or above it in the source),
after the class's docstring.

    python scripts/gen_reference.py           # write docs/reference.md
    python scripts/gen_reference.py --check   # exit 1 when docs/reference.md is stale
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reference.md"

#: The page's hand-written start: how configs work, and an annotated experiment.
PREAMBLE = ROOT / "scripts" / "reference_preamble.md"


# --- reading the source: comments beside or above a field ---------------------------------


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from ``cls``'s own source: the comment ending a field's line(s),
    else the comment lines right above it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    (node,) = ast.parse(source).body
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        beside = [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments]
        if beside:
            found[stmt.target.id] = " ".join(beside)
            continue
        above, n = [], stmt.lineno - 1
        while n in comments and lines[n - 1].lstrip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        if above:
            found[stmt.target.id] = " ".join(above)
    return found


def comments_of(model: type[BaseModel]) -> dict[str, str]:
    """Field comments of ``model`` and its bases (the nearest class wins)."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls is not BaseModel:
            found.update(field_comments(cls))
    return found


def docstring(obj: Any) -> str:
    """``obj``'s docstring in Markdown: Sphinx roles and double backticks made plain code."""
    if not obj.__doc__:
        return ""
    text = inspect.cleandoc(obj.__doc__)
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)


# --- rendering types and defaults ----------------------------------------------------------


def is_config(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def nested_configs(tp: Any) -> list[type[BaseModel]]:
    """The config classes inside an annotation (through unions, lists, dicts, Annotated)."""
    if is_config(tp):
        return [tp]
    return [c for arg in typing.get_args(tp) for c in nested_configs(arg)]


class Renderer:
    """Renders the reference; ``registry_bases`` maps a registry's base class to the section
    that lists its members."""

    def __init__(self, registry_bases: dict[type, str], models: list[type] = ()) -> None:
        self.registry_bases = registry_bases
        names = [m.__name__ for m in models]
        #: each config class's heading: its name, or module.name where two share a name
        self.headings = {
            m: f"{m.__module__.rsplit('.', 1)[-1]}.{m.__name__}"
            if names.count(m.__name__) > 1
            else m.__name__
            for m in models
        }

    def heading(self, model: type) -> str:
        return self.headings.get(model, model.__name__)

    def type_name(self, tp: Any) -> str:
        if tp is type(None):
            return "null"
        for base, section in self.registry_bases.items():
            if tp is base:
                return f"[{section}](#{anchor(section)})"
        if is_config(tp):
            return f"[{self.heading(tp)}](#{anchor(self.heading(tp))})"
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return self.type_name(args[0])
        if origin in (typing.Union, types.UnionType):
            return " | ".join(self.type_name(a) for a in args)
        if origin is typing.Literal:
            return " | ".join(f"`{scalar(a)}`" for a in args)
        if origin in (list, tuple, dict, set):
            inner = ", ".join("…" if a is Ellipsis else self.type_name(a) for a in args)
            return f"{origin.__name__}[{inner}]" if args else origin.__name__
        if isinstance(tp, type):
            return tp.__name__
        return re.sub(r"\btyping\.", "", str(tp))

    def field_type(self, info: FieldInfo) -> str:
        tp = info.annotation
        text = self.type_name(tp)
        if is_count_or_share(info):
            text = text.replace("int | float", "count or share")
        return text


def is_count_or_share(info: FieldInfo) -> bool:
    """A :data:`~sslpoison.configbase.CountOrShare` field (its validator is in the metadata)."""
    return any(
        getattr(getattr(m, "func", None), "__name__", "") == "_count_or_share"
        for m in info.metadata
    ) or "_count_or_share" in repr(info.annotation)


def scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def default_of(info: FieldInfo) -> str:
    if info.default_factory is not None:
        factory: Callable[..., Any] = info.default_factory
        value = factory({}) if info.default_factory_takes_validated_data else factory()
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, (tuple, list)):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = scalar(value)
    return f"`{text}`" if len(text) <= 80 else "see the section"


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- the page --------------------------------------------------------------------------------


def model_section(
    model: type[BaseModel], heading: str, level: str, renderer: Renderer, where: str = ""
) -> tuple[str, list[type[BaseModel]]]:
    """A section for ``model``: its docstring and one table row per field; also the config
    classes its fields hold."""
    lines = [f"{level} {heading}", ""]
    if where:
        lines += [where, ""]
    doc = docstring(model)
    if doc:
        lines += [doc, ""]
    comments = comments_of(model)
    lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    nested: list[type[BaseModel]] = []
    for key, info in model.model_fields.items():
        meaning = info.description or comments.get(key, "")
        row = [f"`{key}`", renderer.field_type(info), default_of(info), meaning]
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
        for tp in nested_configs(info.annotation):
            if tp not in renderer.registry_bases:
                nested.append(tp)
    return "\n".join(lines) + "\n", nested


def reachable(models: list[type[BaseModel]], skip: set[type]) -> list[type[BaseModel]]:
    """``models`` and every config class their fields hold, in the order first met."""
    found: list[type[BaseModel]] = []
    todo = list(models)
    while todo:
        model = todo.pop(0)
        if model in found or model in skip:
            continue
        found.append(model)
        for info in model.model_fields.values():
            todo += nested_configs(info.annotation)
    return found


def method_section(name: str, target: Any, skip: tuple[str, ...]) -> str:
    """``pretrain.method_args`` of one method: its constructor's arguments, with the
    ``Args:`` lines of its docstring."""
    doc = docstring(target)
    summary = doc.split("\n\n")[0].replace("\n", " ") if doc else ""
    described = args_of(doc)
    lines = [f"### `{name}`", "", f"`{target.__module__}.{target.__name__}`: {summary}", ""]
    lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    if is_config(target):  # a config class (CLIP's): its fields, less those set elsewhere
        comments = comments_of(target)
        for key, info in target.model_fields.items():
            if key not in skip:
                meaning = info.description or comments.get(key, "")
                row = (f"`{key}`", Renderer({}).field_type(info), default_of(info), meaning)
                lines.append("| " + " | ".join(cell(c) for c in row) + " |")
        return "\n".join(lines) + "\n"
    hints = typing.get_type_hints(target.__init__)
    for arg, p in inspect.signature(target).parameters.items():
        if arg in skip or arg == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        tp = Renderer({}).type_name(hints.get(arg, Any))
        default = "required" if p.default is p.empty else f"`{scalar(p.default)}`"
        lines.append(
            "| " + " | ".join(cell(c) for c in (f"`{arg}`", tp, default, described.get(arg, "")))
        )
        lines[-1] += " |"
    return "\n".join(lines) + "\n"


def args_of(doc: str) -> dict[str, str]:
    """``{argument: description}`` from a Google-style ``Args:`` block."""
    found: dict[str, str] = {}
    if "Args:" not in doc:
        return found
    block = doc.split("Args:", 1)[1]
    current: list[str] = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith(" "):
            break  # the next section (Returns:, ...)
        match = re.match(r"\s{4}([\w, ]+):\s*(.*)", line)
        if match and not line.startswith(" " * 6):
            current = [n.strip() for n in match.group(1).split(",")]
            for n in current:
                found[n] = match.group(2)
        elif line.strip():
            for n in current:
                found[n] += " " + line.strip()
    return found


def render(root: type[BaseModel] | None = None) -> str:
    """The whole page (``root``: the experiment schema; a test passes a variant)."""
    from sslpoison.attacks import ATTACKS, AttackConfig
    from sslpoison.defenses import DEFENSES, DefenseConfig
    from sslpoison.detectors import DETECTORS, DetectorConfig
    from sslpoison.experiment.config import ExperimentConfig
    from sslpoison.ssl import METHODS
    from sslpoison.ssl.clip import CLIPConfig

    root = root or ExperimentConfig
    bases = {AttackConfig: "Attacks", DefenseConfig: "Defenses", DetectorConfig: "Detectors"}
    registries = [
        ("Attacks", "attack", ATTACKS),
        ("Defenses", "defenses", DEFENSES),
        ("Detectors", "detectors", DETECTORS),
    ]
    entries = [m for _, _, registry in registries for m in registry.values()]
    renderer = Renderer(bases, reachable([root, *entries], set(bases)))
    parts = [PREAMBLE.read_text()]
    done: set[type] = set()

    def walk(todo: list[type[BaseModel]], level: str) -> None:
        while todo:
            model = todo.pop(0)
            if model in done:
                continue
            done.add(model)
            text, nested = model_section(model, renderer.heading(model), level, renderer)
            parts.append(text)
            todo.extend(nested)

    text, nested = model_section(
        root, "The experiment (top level)", "##", renderer, "`ExperimentConfig`, the whole file."
    )
    parts += [text, "## Sections\n\nThe config classes the experiment's fields hold.\n"]
    done.add(root)
    walk(nested, "###")
    for title, key, registry in registries:
        names = ", ".join(f"`{n}`" for n in registry)
        parts.append(f"## {title}\n\n`{key}:` entries, picked by `name`: {names}.\n")
        nested = []
        for name, model in registry.items():
            text, more = model_section(
                model, f"`{name}`", "###", renderer, f"`{model.__module__}.{model.__name__}`"
            )
            parts.append(text)
            done.add(model)
            nested += more
        walk(nested, "###")
    parts.append(
        "## SSL methods\n\n`pretrain.method` picks one; `pretrain.method_args` holds its "
        "constructor's arguments, type-checked from the signature.\n"
    )
    for name, method in METHODS.items():
        parts.append(method_section(name, method, ("backbone",)))
    parts.append(method_section("clip", CLIPConfig, ("backbone", "text")))
    return "\n".join(parts)


def main(argv: list[str] | None = None, root: type[BaseModel] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    page = render(root)
    if args.check:
        if not args.out.exists() or args.out.read_text() != page:
            print(f"{args.out} is stale: run python scripts/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(page)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
