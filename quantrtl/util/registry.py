"""The plug-in registries' shared plumbing (standard library only): a named, ordered
collection of records with built-ins that cannot be removed, and the loading of pieces
named as ``"module:attribute"`` strings."""
from __future__ import annotations

import importlib
from typing import Any, Generic, Iterable, TypeVar

__all__ = ["Registry", "load_named"]

T = TypeVar("T")


def load_named(value: Any, owner: str, piece: str) -> Any:
    """``value`` itself, or the object a ``"module:attribute"`` string names (imported now);
    a :class:`LookupError` naming ``owner`` and its ``piece`` when it cannot be loaded."""
    if value is None:
        raise LookupError(f"{owner} has no {piece}")
    if not isinstance(value, str):
        return value
    module, _, attr = value.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise LookupError(f"{owner}: its {piece} {value!r} cannot be loaded ({e})") from None


class Registry(Generic[T]):
    """Records by their ``name``, in registration order; ``kind`` names them in messages."""

    def __init__(self, kind: str, builtin: Iterable[T]):
        self.kind = kind
        self.builtin = tuple(builtin)
        self._items: dict[str, T] = {r.name: r for r in self.builtin}

    def register(self, record: T) -> T:
        if record.name in self._items:
            raise ValueError(f"{self.kind} {record.name!r} is registered already")
        self._items[record.name] = record
        return record

    def unregister(self, name: str) -> None:
        if name in {r.name for r in self.builtin}:
            raise ValueError(f"{self.kind} {name!r} is built in")
        self._items.pop(name, None)

    def records(self) -> list[T]:
        return list(self._items.values())

    def names(self) -> list[str]:
        return list(self._items)

    def get(self, name: str, error=KeyError) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise error(f"unknown {self.kind} {name!r} (supported: {', '.join(self._items)})") from None
