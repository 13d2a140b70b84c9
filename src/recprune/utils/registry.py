"""Registries: name -> class, each entry carrying its config class (as PEFT's).

A new selector, score solver or backend is one new file that decorates its class::

    @register_selector("mine")          # config: the selector's own dataclass fields
    @config
    class Mine(Selector): ...

    @BACKENDS.register("tiger", config=TigerConfig)
    class Tiger(Recommender): ...

Built-ins are *discovered*: :meth:`Registry.discover` imports every module of the package that
holds them, so no list of modules is kept by hand. Modules outside the package register the
same way once imported (``recprune --plugin my_module ...`` or ``RECPRUNE_PLUGINS``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from recprune.config import fields_of, from_dict, to_dict
from recprune.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered class: ``cls(**options)`` builds it; ``config`` validates its options."""

    name: str
    cls: type[T]
    config: type | None

    @property
    def doc(self) -> str:
        return (self.cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")

    def options(self) -> list[dict[str, Any]]:
        return fields_of(self.config) if self.config is not None else []


class Registry(Generic[T]):
    """Classes registered by name; ``create(name, **options)`` builds one with clear errors.

    ``package``: the package whose modules hold the built-ins (imported on first lookup)."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, Entry[T]] = {}
        self._discovered = package is None

    def register(self, name: str, *, config: type | None = None):
        """Decorator registering a class under ``name``. ``config``: the class of its options
        (default: the class itself when it is a dataclass, whose fields are then its options)."""
        def deco(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name].cls is not cls:
                raise ConfigError(f"{self.kind} {name!r} is registered twice "
                                  f"({self._entries[name].cls.__module__} and {cls.__module__})")
            cls.name = name  # type: ignore[attr-defined]
            cfg = config if config is not None else (cls if dataclasses.is_dataclass(cls)
                                                     else None)
            self._entries[name] = Entry(name, cls, cfg)
            return cls
        return deco

    def discover(self) -> None:
        """Import every module of ``package`` (once) and the ``RECPRUNE_PLUGINS`` modules."""
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)  # type: ignore[arg-type]
        for info in pkgutil.iter_modules(pkg.__path__, f"{self.package}."):
            importlib.import_module(info.name)
        load_plugins(os.environ.get("RECPRUNE_PLUGINS", ""))

    def entry(self, name: str) -> Entry[T]:
        self.discover()
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {self.names()}")
        return self._entries[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def validate(self, name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """``options`` checked against the entry's config class, with every default filled in
        (a :class:`ConfigError` names an unknown or invalid option)."""
        e = self.entry(name)
        if e.config is None:
            if options:
                raise ConfigError(f"{self.kind} {name!r} takes no options, got {sorted(options)}")
            return {}
        return to_dict(from_dict(e.config, dict(options or {}), where=f"{self.kind} {name!r}"))

    def create(self, name: str, **options: Any) -> T:
        e = self.entry(name)
        if e.config is not None and e.config is not e.cls:
            self.validate(name, options)  # a clear error before the class sees the options
        try:
            return e.cls(**options)
        except TypeError as err:
            raise ConfigError(f"bad options for {self.kind} {name!r}: {err}") from None

    def __getitem__(self, name: str) -> type[T]:
        return self.entry(name).cls

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def load_plugins(spec: str) -> None:
    """Import each comma-separated module of ``spec`` (they register their classes)."""
    for mod in (m.strip() for m in spec.split(",")):
        if not mod:
            continue
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ConfigError(f"plugin module {mod!r} cannot be imported ({e})") from None
