"""Name -> implementation registries.

A paper spec names its losses, models and benchmarks by string; the engine looks
them up here and never imports a paper's module by name.  Method modules under
``softrepro.methods`` register themselves on import (see ``load_methods``).
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict, TypeVar

F = TypeVar("F", bound=Callable)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(obj: F) -> F:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Callable:
        load_methods()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        load_methods()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        load_methods()
        return name in self._items


LOSSES = Registry("loss")
MODELS = Registry("model")
BENCHMARKS = Registry("benchmark")
OPTIMIZERS = Registry("optimizer")
GENERATORS = Registry("dataset generator")  # make(seed, **params) -> {"train": (x, y), "test": (x, y)[, "n_outputs": K]}
TASKS = Registry("task")  # evaluate(model, loss_fn, x, y, final=bool) -> {"test_...": float}; "classification" is built in
PROBES = Registry("probe")  # probe(model, x_train, y_train, loss_fn=...) -> {metric: float}, run once after training

_loaded = False


def load_methods() -> None:
    """Import the engine's built-in components and every module in softrepro.methods."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from softrepro import generators, losses, models, probes  # noqa: F401  (built-ins register on import)
    import softrepro.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
