"""Pytest setup for the doctests in ``src/bioformers`` (the fixtures of the tests live in ``tests/conftest.py``)."""

from __future__ import annotations

import matplotlib
import pytest
from _pytest.doctest import DoctestItem
from scvi.train._progress import ProgressBar

matplotlib.use("Agg")  # examples draw plots; none may open a window


@pytest.fixture(autouse=True)
def _quiet_doctests(request, monkeypatch):
    """Doctests compare stdout, so training in an example must print nothing; figures are closed afterwards."""
    if not isinstance(request.node, DoctestItem):
        yield
        return
    # scvi-tools' progress bar writes to stdout, which doctest would read as the example's output.
    monkeypatch.setattr(ProgressBar, "is_enabled", property(lambda self: False))
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
