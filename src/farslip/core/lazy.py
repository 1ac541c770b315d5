"""Packages that import their parts on first use, so ``farslip --help`` does not load torch (PEP 562).

    __getattr__, __dir__ = lazy_exports(__name__, {"load_model": ".loading", "dense_features": ".dense"})

A name is imported from its module the first time it is used (``from farslip.models import load_model`` works as
before); a submodule not named in the table is imported when it is reached as an attribute.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for ``package``: each name of ``exports`` comes from the module it maps to
    (relative to the package)."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is not None:
            return getattr(importlib.import_module(module, package), name)
        try:
            return importlib.import_module(f".{name}", package)
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":
                raise  # the submodule exists and is missing something itself
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    def __dir__() -> list:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
