"""A small name -> class registry (as PEFT's): a new method is one decorated class."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from recprune.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes registered by name; ``create(name, **options)`` instantiates one with clear errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str):
        def deco(cls: type[T]) -> type[T]:
            cls.name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            return cls
        return deco

    def create(self, name: str, **options: Any) -> T:
        if name not in self._classes:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {sorted(self._classes)}")
        try:
            return self._classes[name](**options)
        except TypeError as e:
            raise ConfigError(f"bad options for {self.kind} {name!r}: {e}") from None

    def __getitem__(self, name: str) -> type[T]:
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)
