"""Name -> implementation registries.

A paper spec names its losses, models and benchmarks by string; the engine looks
them up here and never imports a paper's module by name.  Method modules under
``softrepro.methods`` register themselves on import (see ``load_methods``).
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Callable, Dict, TypeVar

F = TypeVar("F", bound=Callable)


class NotRun(Exception):
    """Raised by a benchmark that cannot run on this machine (no GPU, a peer library missing): the
    run is recorded as *not run* with the message as its reason, and its claims say so."""


class Registry:
    def __init__(self, kind: str, fixed: tuple[str, ...] = ()):
        self.kind = kind
        self.fixed = fixed  # arguments the engine passes itself (not spec keys)
        self._items: Dict[str, Callable] = {}
        self._meta: Dict[str, dict] = {}

    def register(self, name: str, forwards_to=None, params: tuple[str, ...] | None = None) -> Callable[[F], F]:
        """``forwards_to``: the class(es) a ``**kw`` factory passes its keywords to; ``params``: the
        keys of a factory that takes a dict (benchmarks).  Both let ``make validate`` check the
        spec's keys (``accepted``)."""
        def deco(obj: F) -> F:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self._meta[name] = {"forwards_to": forwards_to or getattr(obj, "forwards_to", None), "params": params}
            return obj

        return deco

    def accepted(self, name: str) -> set[str] | None:
        """The spec keys the factory ``name`` accepts, or None when it cannot tell (then any pass)."""
        load_methods()
        meta, obj = self._meta[name], self._items[name]
        if meta["params"] is not None:
            return set(meta["params"])
        targets = meta["forwards_to"]
        targets = [] if targets is None else list(targets) if isinstance(targets, (list, tuple)) else [targets]

        def keywords(fn) -> tuple[set[str], bool]:
            params = [p for p in inspect.signature(fn.__init__ if inspect.isclass(fn) else fn).parameters.values()
                      if p.name != "self"]
            return ({p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)},
                    any(p.kind == p.VAR_KEYWORD for p in params))

        out, open_ = keywords(obj)
        if open_:
            if not targets:
                return None  # **kw with nothing to follow: any key passes
            for target in targets:  # the keywords go on to one of these
                names, target_open = keywords(target)
                if target_open:
                    return None
                out |= names
        return out - set(self.fixed)

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
MODELS = Registry("model", fixed=("in_shape", "n_classes"))
BENCHMARKS = Registry("benchmark", fixed=("threads", "data"))  # run(params: dict, seed, progress) -> (metrics, rows); "data": the splits of the experiment's `dataset`, when it declares one
OPTIMIZERS = Registry("optimizer", fixed=("params",))  # make(params, **kw) -> torch.optim.Optimizer
SCHEDULES = Registry("schedule", fixed=("opt", "steps"))  # make(optimizer, steps, **kw) -> LR scheduler, stepped per training step
FORMATS = Registry("dataset format")  # load(name, cfg, data_dir, seed, params) -> splits (softrepro.datasets)
GENERATORS = Registry("dataset generator", fixed=("seed",))  # make(seed, **params) -> {"train": (x, y), "test": (x, y)[, "n_outputs": K]}
TASKS = Registry("task")  # evaluate(model, loss_fn, x, y, final=bool) -> {"test_...": float}; "classification" is built in
SCORES = Registry("ood score")  # Score(**params) with fit(ctx) and score(ctx, x) (softrepro.ood), applied after training
PROBES = Registry("probe")  # probe(model, x_train, y_train, loss_fn=...) -> {metric: float}, run once after training

_loaded = False


def load_methods() -> None:
    """Import the engine's built-in components and every module in softrepro.methods."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from softrepro import datasets, generators, losses, models, ood, optim, probes  # noqa: F401  (built-ins register on import)
    import softrepro.methods as pkg

    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):  # methods/<family>/<module>.py
        if not info.name.rsplit(".", 1)[-1].startswith("_"):  # _name: a private helper its method imports when it runs
            importlib.import_module(info.name)
