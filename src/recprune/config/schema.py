"""Typed configurations: one declarative style for every option of recprune.

A configuration is a dataclass decorated with :func:`config` (a pydantic dataclass that forbids
unknown keys). Field types are checked and coerced on construction (``"3"`` -> ``3`` for an int,
a list -> a tuple), constraints are declared beside the type::

    @config
    class LiSSAConfig:
        depth: Annotated[int, Field(ge=1, description="recursion steps")] = 5000

and every failure is a :class:`~recprune.errors.ConfigError` naming the dotted field. Configs
are still dataclasses (``dataclasses.asdict``/``replace`` work), serialise with :func:`to_dict`
and load from plain data (JSON, YAML, TOML, CLI overrides) with :func:`from_dict`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from recprune.errors import ConfigError

T = TypeVar("T")

_SETTINGS = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def config(cls: type[T] | None = None, /, *, frozen: bool = False) -> Any:
    """Class decorator: a validated dataclass whose fields are options (see the module doc).

    Validation errors at construction become :class:`ConfigError` naming the field."""

    def wrap(c: type[T]) -> type[T]:
        out = _pydantic_dataclass(c, config=_SETTINGS, frozen=frozen)  # type: ignore[call-overload]
        init = out.__init__

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as e:
                raise ConfigError(format_errors(e, c.__name__)) from None

        __init__.__doc__ = init.__doc__
        out.__init__ = __init__  # type: ignore[method-assign]
        return out  # type: ignore[return-value]

    return wrap if cls is None else wrap(cls)


def format_errors(e: ValidationError, where: str) -> str:
    """One line per invalid field: ``where: influence.depth: Input should be >= 1 (got 0)``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        got = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        msg = "unknown option" if err["type"] == "unexpected_keyword_argument" else err["msg"]
        parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")
    return f"{where}: " + "; ".join(parts)


def from_dict(cls: type[T], data: dict[str, Any] | T, where: str | None = None) -> T:
    """Validate plain data (or an instance) into configuration ``cls``."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a table of options, got "
                          f"{type(data).__name__}")
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, where or cls.__name__)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-able dict of a configuration (tuples as lists, paths as strings)."""
    return TypeAdapter(type(cfg)).dump_python(cfg, mode="json")


def _docstring_help(cls: type) -> dict[str, str]:
    """``name: text`` lines of a class docstring (continuation lines indented deeper)."""
    out: dict[str, str] = {}
    current = None
    for line in (inspect.getdoc(cls) or "").splitlines():
        m = re.match(r"^(\w+)(?: / \w+)*: (.+)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.startswith(" ") and line.strip():
            out[current] += " " + line.strip()
        else:
            current = None
    return out


def fields_of(cls: type) -> list[dict[str, Any]]:
    """``name``, ``type``, ``default`` and ``help`` of every option of ``cls`` (CLI help): the
    help is the field's ``description`` or its ``name: text`` line in the class docstring."""
    doc = _docstring_help(cls)
    out = []
    for f in dataclasses.fields(cls):
        info = getattr(cls, "__pydantic_fields__", {}).get(f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        annotation = info.annotation if info is not None else f.type
        out.append({"name": f.name, "type": _type_name(annotation), "default": default,
                    "help": (info.description if info is not None else None)
                    or doc.get(f.name, ""),
                    "nested": default if dataclasses.is_dataclass(default) else None})
    return out


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")

