"""Adapters keyed by the plan's ``kind``, each registered where it is defined (rclone's ``fs.Register``).

A family (sources, destinations, deployers, routers, secret stores) is one :class:`Registry`. An
adapter registers itself with the kinds it serves (``@DESTINATIONS.register("gcs")``), so the code
that opens an adapter for a plan section looks its ``kind`` up and never lists the kinds.

A family names the modules that hold its adapters, as rclone's ``backend/all`` does, and imports
them only when a kind is looked up that no imported module registered: first the module named
like the kind, then the others in their order (light ones first). So an SDK that costs a worker
tens of MB (google-cloud with grpc, modal, huggingface_hub) loads only when a plan uses it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

A = TypeVar("A")


class Registry(Generic[A]):
    """The adapters of one family by kind; ``modules`` are module names inside ``package``."""

    def __init__(self, family: str, package: str, modules: tuple[str, ...]) -> None:
        self.family = family
        self._package = package
        self._modules = modules
        self._adapters: dict[str, A] = {}

    def register(self, *kinds: str) -> Callable[[A], A]:
        """Decorate the adapter (a class or a factory) that serves ``kinds``."""

        def add(adapter: A) -> A:
            for kind in kinds:
                if self._adapters.setdefault(kind, adapter) is not adapter:
                    raise ValueError(f"two {self.family} adapters for kind '{kind}'")
            return adapter

        return add

    def __getitem__(self, kind: str) -> A:
        for module in self._candidates(kind):
            if kind in self._adapters:
                break
            importlib.import_module(f"{self._package}.{module}")
        try:
            return self._adapters[kind]
        except KeyError:
            raise TypeError(f"no {self.family} adapter for kind '{kind}'") from None

    def _candidates(self, kind: str) -> Iterator[str]:
        if kind in self._modules:
            yield kind
        yield from (module for module in self._modules if module != kind)
