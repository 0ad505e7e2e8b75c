"""One registry class for everything the suite looks up by name: methods, metrics, edit metrics,
attacks.

An entry is an object that carries its own metadata (a method class: ``kind``, ``Params``; a
metric: meaning and ``higher_is_better``; an attack: meaning). Registering a name twice is an
error (a plugin cannot silently replace a built-in); an unknown name is an error listing the
registered ones. With ``group``, third-party packages add entries through that entry-point
group (``name = "package.module:object"``), loaded on the first lookup; a broken plugin is
logged and skipped.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class UnknownNameError(KeyError):
    def __str__(self):
        return self.args[0]


class DuplicateNameError(ValueError):
    pass


class Registry(Generic[T]):
    """``name → entry``. ``what`` names the kind of entry in messages ("method", "metric")."""

    def __init__(self, what: str, group: str | None = None, on_register: Callable[[str, T], T] | None = None):
        self.what, self.group = what, group
        self._entries: dict[str, T] = {}
        self._on_register = on_register
        self._plugins_loaded = group is None

    def register(self, name: str, entry: T) -> T:
        if name in self._entries and self._entries[name] is not entry:
            raise DuplicateNameError(f"{self.what} {name!r} is already registered ({self._describe(name)}); "
                                     "choose another name")
        if self._on_register is not None:
            entry = self._on_register(name, entry)
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@REGISTRY.decorator("name")``: register the decorated object, return it unchanged."""
        def deco(entry: T) -> T:
            self.register(name, entry)
            return entry
        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (tests registering a throwaway method clean up with this)."""
        self._entries.pop(name, None)

    def _describe(self, name: str) -> str:
        e = self._entries[name]
        return getattr(e, "__qualname__", None) or type(e).__qualname__

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                log.warning("%s plugin %s not loaded: the name is taken by a built-in", self.what, ep.name)
                continue
            try:
                self.register(ep.name, ep.load())
            except Exception as e:  # a broken plugin must not break the benchmark
                log.warning("could not load %s plugin %s: %s", self.what, ep.name, e)

    def __getitem__(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.what} {name!r}; registered {self.what}s: {sorted(self._entries)}") from None

    def get(self, name: str, default=None):
        self._load_plugins()
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)

    def keys(self):
        return list(self)

    def items(self) -> list[tuple[str, T]]:
        self._load_plugins()
        return list(self._entries.items())

    def values(self) -> list[T]:
        return [v for _, v in self.items()]
