"""What training prints: Lightning's routine messages follow Scanpy's verbosity.

Lightning prints a banner on every run ("GPU available: ...", "Using bfloat16 Automatic Mixed
Precision", a tip about ``litlogger``, "Loading `train_dataloader` ...", "`Trainer.fit` stopped
...") through its loggers at INFO level, and :func:`~lightning.pytorch.seed_everything` (which
``scvi.settings.seed = n`` calls) logs "Seed set to n". It also warns, on every run, about things
that say nothing about the user's data or settings. bioformers hides these inside its own calls
only, in :func:`lightning_console`, and shows them as Lightning prints them from
``sc.settings.verbosity = "hint"`` (3) on. Lightning's warnings about anything else, and every
message of the ``scvi`` logger (governed by ``scvi.settings.verbosity``, as in scvi-tools), are
left as they are.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

import scvi
from scanpy import settings

if TYPE_CHECKING:
    from collections.abc import Iterator

#: The loggers of Lightning (both package names) that print the routine messages.
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")

#: Scanpy verbosity from which Lightning's routine messages and warnings are shown ("hint").
LIGHTNING_VERBOSITY = 3

#: Warnings Lightning gives on runs of bioformers that are not the user's business (regular expressions).
ROUTINE_WARNINGS = (
    # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates
    r".*isinstance\(treespec, LeafSpec\)",
    # bioformers logs losses once per epoch, so the per-step logging interval does not matter
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # training plans that inherit a validation step, run without validation cells
    r"You defined a `validation_step` but have no `val_dataloader`",
    # cells streamed from disk: one loading process (no workers), whose length is exact
    r"Your `IterableDataset` has `__len__` defined",
)


def lightning_verbose() -> bool:
    """Whether Lightning's routine messages are shown: ``sc.settings.verbosity`` is "hint" (3) or higher."""
    return settings.verbosity >= LIGHTNING_VERBOSITY


@contextmanager
def lightning_console() -> Iterator[None]:
    """Hide Lightning's routine messages and warnings inside, below ``sc.settings.verbosity = "hint"``.

    The Lightning loggers are raised to WARNING (never lowered) and the warnings of
    :data:`ROUTINE_WARNINGS` ignored; both are restored on exit, so nothing changes outside.

    Examples
    --------
    >>> import logging
    >>> import scanpy as sc
    >>> from bioformers._logging import lightning_console
    >>> sc.settings.verbosity = "warning"  # the default
    >>> with lightning_console():
    ...     logging.getLogger("lightning.pytorch").isEnabledFor(logging.INFO)
    False
    >>> logging.getLogger("lightning.pytorch").isEnabledFor(logging.INFO)
    True
    """
    if lightning_verbose():
        yield
        return
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            for pattern in ROUTINE_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            for logger in loggers:
                logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def seed(value: int) -> None:
    """Seed every random number generator (``scvi.settings.seed``) without Lightning's "Seed set to" line.

    The line is shown, as Lightning prints it, from ``sc.settings.verbosity = "hint"`` on.
    """
    with lightning_console():
        scvi.settings.seed = value
