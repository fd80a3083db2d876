"""Optional packages of the methods that run through their authors' code, checked without importing them.

GaLore, the 8-bit optimizers, APOLLO, BAdam, Adam-mini and LOMO live in packages outside the core
dependencies (the `methods` extra of pyproject.toml; GaLore's also alone as the `galore` extra). A method
whose package is missing is still listed, with how to install it, and choosing it is refused with one line
before any trial starts: each such method's options call `require()` from their `validate()`, which runs
wherever options are built (suite load, `--set`).
`importlib.util.find_spec` answers without importing the package, so `bench list` stays free of torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator

from memft_bench.harness.core.errors import ConfigError

#: method -> the smallest extra of pyproject.toml that installs its package (else `methods`, which has all)
EXTRAS = {"galore": "galore"}


def install_hint(method: str) -> str:
    """The command that installs `method`'s package at the tested version (the lock, from a checkout)."""
    return f'pip install -c requirements-lock.txt -e ".[{EXTRAS.get(method, "methods")}]"'

#: method name -> (module that must import, its PyPI distribution)
PACKAGES: dict[str, tuple[str, str]] = {
    "galore": ("galore_torch", "galore-torch"),
    "adamw8bit": ("bitsandbytes", "bitsandbytes"),
    "paged-adamw8bit": ("bitsandbytes", "bitsandbytes"),
    "ao-adamw8bit": ("torchao", "torchao"),
    "ao-adamw4bit": ("torchao", "torchao"),
    "apollo": ("apollo_torch", "apollo-torch"),
    "apollo-mini": ("apollo_torch", "apollo-torch"),
    "badam": ("badam", "badam"),
    "adam-mini": ("adam_mini", "adam-mini"),
    "lomo": ("lomo_optim", "lomo-optim"),
    "adalomo": ("lomo_optim", "lomo-optim"),
}

#: licences that restrict use, shown by `bench list methods`
LICENCES: dict[str, str] = {
    "apollo": "apollo-torch is CC BY-NC 4.0: non-commercial use only",
    "apollo-mini": "apollo-torch is CC BY-NC 4.0: non-commercial use only",
}


def missing(method: str) -> str | None:
    """The PyPI name of `method`'s package when it is not installed, else None."""
    if method not in PACKAGES:
        return None
    module, distribution = PACKAGES[method]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else distribution


def install_note(method: str) -> str:
    """What `bench list methods` appends to a method's line: its missing package, its licence."""
    notes = []
    distribution = missing(method)
    if distribution:
        notes.append(f"[not installed: {install_hint(method)} or pip install {distribution}]")
    if method in LICENCES:
        notes.append(f"[licence: {LICENCES[method]}]")
    return " ".join(notes)


def require(method: str, where: str) -> None:
    """Refuse with one line when `method`'s package is missing (called from its options' validate; `where`
    names the method as the user chose it)."""
    distribution = missing(method)
    if distribution:
        raise ConfigError(f"{where}: this method needs the package {distribution}, which is not installed; "
                          f"install it with {install_hint(method)} (or pip install {distribution})")


@contextlib.contextmanager
def quiet_bitsandbytes_import() -> Iterator[None]:
    """Import bitsandbytes (directly, or through galore-torch) without its CPU backend's warning about the
    optional `kernels` hub package: irrelevant here, and it would be printed into every trial's log."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
