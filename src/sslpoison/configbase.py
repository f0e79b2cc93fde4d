"""The base of every config class, library and YAML alike: typed and frozen; unknown keys
and bad values fail naming the key (:func:`format_validation_error`).

Not the experiment schema (what a YAML experiment holds): that is
:mod:`sslpoison.experiment.config`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PositiveInt,
    ValidationError,
    create_model,
)

from sslpoison.errors import ConfigError, warn

#: The config keys that cannot change a run's numbers, at any depth: where and how it runs
#: (``device``, ``threads``, ``cache_dir``), where it reports (``results_db``, ``tracker``),
#: what it prints and how often it saves (``progress``, ``checkpoint_every``). The one list
#: left out of a run's identity (:func:`~sslpoison.experiment.preflight.run_identity`), of
#: stage keys (:class:`~sslpoison.train.engine.TrainConfig`) and of the settings by which the
#: results store groups repetitions (:func:`~sslpoison.results.store.settings_key`).
RESULT_NEUTRAL = frozenset(
    {"device", "threads", "cache_dir", "results_db", "tracker", "progress", "checkpoint_every"}
)


def without_neutral(obj: Any, also: frozenset[str] = frozenset()) -> Any:
    """``obj`` (a config as JSON data) without the :data:`RESULT_NEUTRAL` keys and ``also``,
    at any depth."""
    skip = RESULT_NEUTRAL | also
    if isinstance(obj, dict):
        return {k: without_neutral(v, also) for k, v in obj.items() if k not in skip}
    if isinstance(obj, list):
        return [without_neutral(v, also) for v in obj]
    return obj


def _count_or_share(value: int | float) -> int | float:
    if isinstance(value, float) and not 0 < value <= 1:
        raise ValueError(f"a share must lie in (0, 1], got {value}")
    return value


#: A number of items (an int ≥ 1) or a share of them (a float in (0, 1]).
CountOrShare = Annotated[PositiveInt | float, AfterValidator(_count_or_share)]


def checked_count(
    key: str,
    asked: int | float,
    there: int,
    what: str,
    *,
    allowed: bool,
    explicit: bool = True,
    flag: str | None = None,
) -> int | float:
    """``asked`` (a count or a share) of ``there`` images of ``what``, unchanged; a count
    larger than ``there`` is a ConfigError naming ``key`` and the ``flag`` that allows it
    (default ``<section>.allow_smaller``), unless ``allowed`` or not ``explicit`` (left at
    its default): then it is recorded as a warning of the run (printed as a note when
    ``allowed``: the config asked for it)."""
    if isinstance(asked, float) or asked <= there:
        return asked
    message = f"{key}: {asked} asked for, but {what} has {there}"
    if explicit and not allowed:
        flag = flag or f"{key.split('.')[0]}.allow_smaller"
        raise ConfigError(f"{message} (set {flag}: true to use all {there})")
    warn(f"{message}; using all {there}", loud=not allowed)
    return asked


class Config(BaseModel):
    """Base of every config object (library and YAML alike): frozen, no extra keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def check_kwargs(
    target: Callable[..., Any],
    kwargs: dict[str, Any],
    where: str,
    skip: tuple[str, ...] = ("backbone",),
) -> dict[str, Any]:
    """Validate ``kwargs`` against ``target``'s signature and type hints (pydantic).

    Unknown names and values of the wrong type raise ``ValueError`` naming ``where.key``.
    Returns the validated (coerced) keyword arguments.
    """
    model = _signature_model(target, skip)
    try:
        return dict(model.model_validate(kwargs).model_dump(exclude_unset=True))
    except ValidationError as e:
        raise ValueError(format_validation_error(e, where)) from None


@functools.cache
def _signature_model(target: Callable[..., Any], skip: tuple[str, ...]) -> type[BaseModel]:
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    fields: dict[str, Any] = {}
    for name, p in inspect.signature(target).parameters.items():
        if name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[name] = (hints.get(name, Any), default)
    return create_model(
        f"{getattr(target, '__name__', 'target')}Args",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )


def _known_keys() -> list[str]:
    """Every field name of every config class (:class:`Config` and its subclasses)."""
    keys, todo = set(), [Config]
    while todo:
        cls = todo.pop()
        keys |= set(cls.model_fields)
        todo += cls.__subclasses__()
    return sorted(keys)


def _did_you_mean(key: str) -> str:
    """`` (did you mean 'lambda2'?)`` for a mistyped ``key`` near a known one, else ``""``."""
    close = difflib.get_close_matches(key, _known_keys(), n=1, cutoff=0.8)
    return f" (did you mean {close[0]!r}?)" if close and close[0] != key else ""


def format_validation_error(
    error: ValidationError, where: str = "", tags: frozenset[str] = frozenset()
) -> str:
    """One line per problem: ``key.path: message``.

    ``tags``: the names of a ``name``-discriminated union's members (defenses, detectors),
    which pydantic puts in the key path; they are left out of it.
    """
    lines = []
    for item in error.errors():
        loc = ".".join(str(x) for x in (where, *item["loc"]) if x != "" and x not in tags)
        msg = item["msg"].removeprefix("Value error, ")
        ctx = item.get("ctx") or {}
        if item["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(str(item["loc"][-1]) if item["loc"] else "")
        elif item["type"] == "union_tag_invalid":
            msg = (
                f"unknown name {ctx['tag']!r} (known: {ctx['expected_tags'].replace(chr(39), '')})"
            )
        elif item["type"] == "union_tag_not_found":
            msg = f"the key {ctx['discriminator']} is missing"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)
