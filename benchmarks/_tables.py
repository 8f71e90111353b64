"""Markdown tables for the benchmark scripts (no tabulate dependency)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a markdown table: numbers with ``digits`` decimals, the index as the first column."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    head = "| " + " | ".join([str(frame.index.name or ""), *map(str, frame.columns)]) + " |"
    rows = ["| " + " | ".join([str(i), *(cell(v) for v in row)]) + " |" for i, row in frame.iterrows()]
    return "\n".join([head, "|---" * (frame.shape[1] + 1) + "|", *rows])


def mean_sd(values) -> str:
    """``mean ± sd`` (sample sd) of the seeds' values; the value alone, marked, for one seed."""
    values = np.asarray(values, dtype=float)
    if values.size == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
