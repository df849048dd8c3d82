"""Name -> constructor maps for datasets, encoders and objectives, filled by decorators at import time.

    @register("encoder", "mlp")
    def build_mlp(spec, cfg): ...

An unknown name raises :class:`RegistryError` that lists the registered choices.
"""

from __future__ import annotations

from typing import Any, Callable

_REGISTRIES: dict[str, dict[str, Callable[..., Any]]] = {"dataset": {}, "encoder": {}, "objective": {}}


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def register(kind: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        table = _REGISTRIES[kind]
        if name in table:
            raise ValueError(f"{kind} '{name}' is registered twice")
        table[name] = fn
        return fn

    return decorate


def get(kind: str, name: str) -> Callable[..., Any]:
    table = _REGISTRIES[kind]
    if name not in table:
        raise RegistryError(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(table))}")
    return table[name]


def names(kind: str) -> list[str]:
    return sorted(_REGISTRIES[kind])
