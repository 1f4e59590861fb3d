"""The pair-sampling strategies by name (docs/method.md §6, §14-15).

Each sampler registers itself where it is defined, with :func:`register_strategy`; the
package :mod:`aas_ray.al` imports every sampler module, so the registry is complete once it
is imported. :func:`make_sampler` is the one way to build a sampler by name, and
:func:`list_strategies` the one list of names: the configuration, the AL cycle and the
reports derive theirs from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from aas_ray.checks import InputError


@dataclass(frozen=True)
class StrategyEntry:
    """One registered sampler: its class, a description for users, where tables list it
    (``rank``: the simple baselines first, the method last) and the prefix of its parameters'
    keys in the configuration's ``al`` section."""

    name: str
    cls: type
    description: str
    rank: int
    config_prefix: str


_REGISTRY: dict[str, StrategyEntry] = {}


def register_strategy(name: str, *, description: str, rank: int, config_prefix: str | None = None):
    """Class decorator: register a sampler under ``name`` (which becomes its ``name``). Its
    parameters are its dataclass fields; they are configured as ``al.<config_prefix><field>``
    (default prefix: the name and an underscore)."""

    def add(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is registered twice ({_REGISTRY[name].cls.__name__}, {cls.__name__})")
        cls.name = name
        prefix = f"{name.replace('-', '_')}_" if config_prefix is None else config_prefix
        _REGISTRY[name] = StrategyEntry(name, cls, description, rank, prefix)
        return cls

    return add


def list_strategies() -> list[str]:
    """Every registered strategy, in the order tables and plots list them."""
    return [s.name for s in sorted(_REGISTRY.values(), key=lambda s: (s.rank, s.name))]


def strategy_entry(name: str) -> StrategyEntry:
    """The registered strategy ``name``; an unknown name is an error listing the known ones."""
    if name not in _REGISTRY:
        raise InputError(f"unknown sampling strategy {name!r}; known: {', '.join(list_strategies())}")
    return _REGISTRY[name]


def strategy_params(name: str) -> dict[str, object]:
    """The parameters of strategy ``name`` and their defaults (the one place they are set)."""
    return {f.name: f.default for f in dataclasses.fields(strategy_entry(name).cls)}


def config_keys(name: str) -> dict[str, str]:
    """Each parameter of strategy ``name`` -> its key in the configuration's ``al`` section."""
    prefix = strategy_entry(name).config_prefix
    return {p: prefix + p for p in strategy_params(name)}


def make_sampler(name: str, **params):
    """The sampler of strategy ``name`` with ``params``; an unknown name or parameter is a
    one-line error, and the sampler checks its values."""
    known = strategy_params(name)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise InputError(f"strategy {name!r} has no parameter {unknown[0]!r}; its parameters: "
                         f"{', '.join(known) or 'none'}")
    return strategy_entry(name).cls(**params)
