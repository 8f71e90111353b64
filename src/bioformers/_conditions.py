"""The conditions a generative model is asked for, as one table: what ``bf.tl.generate`` accepts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from ._validation import did_you_mean

#: What :func:`bioformers.tl.generate` accepts as ``conditions``.
Conditions = Mapping | pd.DataFrame | str | Sequence[str] | None


def condition_table(conditions: Conditions, keys: list[str], *, missing: Literal["raise", "none"]) -> pd.DataFrame:
    """``conditions`` as a DataFrame with exactly ``keys`` as columns, one row per condition, ``None`` where left out.

    Accepts a dict of key -> value or list of values (lists of one length, zipped; single values
    repeated), a DataFrame with one row per condition, a value or list of values when there is a
    single key, or ``None`` (one condition, every key left out). Keys that are not ``keys`` are
    refused; absent keys are refused (``missing="raise"``) or left out (``"none"``).
    """
    if conditions is None:
        return pd.DataFrame({k: [None] for k in keys}, dtype=object, index=pd.RangeIndex(1))
    if isinstance(conditions, str) or (isinstance(conditions, Sequence) and not isinstance(conditions, Mapping)):
        if len(keys) != 1:
            raise ValueError(
                f"The model has {len(keys)} conditions {keys}, so a bare value is ambiguous: pass a dict, e.g. "
                f"`{{{', '.join(f'{k!r}: ...' for k in keys)}}}`."
                if keys
                else "The model was trained without conditions: pass `conditions=None`."
            )
        conditions = {keys[0]: conditions}
    if isinstance(conditions, pd.DataFrame):
        frame = conditions.reset_index(drop=True).astype(object)
    elif isinstance(conditions, Mapping):
        values = {
            k: list(v) if isinstance(v, Sequence | np.ndarray | pd.Series) and not isinstance(v, str) else v
            for k, v in conditions.items()
        }
        lengths = {len(v) for v in values.values() if isinstance(v, list)}
        if len(lengths) > 1:
            raise ValueError(
                f"The lists of condition values have different lengths {sorted(lengths)}; give them one length."
            )
        n = lengths.pop() if lengths else 1
        frame = pd.DataFrame({k: v if isinstance(v, list) else [v] * n for k, v in values.items()}, dtype=object)
        frame.index = pd.RangeIndex(n)
    else:
        raise TypeError(
            "`conditions` must be a dict, a DataFrame, a value or list of values, or None, not "
            f"{type(conditions).__name__}."
        )
    if len(frame) == 0:
        raise ValueError("`conditions` holds no condition (an empty list or table): give at least one.")
    unknown = [str(k) for k in frame.columns if k not in keys]
    if unknown:
        raise ValueError(
            f"{unknown} are not conditions of this model; it conditions on {keys or 'nothing'}."
            f"{did_you_mean(unknown[0], keys)}"
        )
    absent = [k for k in keys if k not in frame.columns]
    if absent and missing == "raise":
        raise ValueError(
            f"Condition key(s) {absent} missing: the model conditions on {keys}. Give a value for each, or "
            f"`None` to generate without it (e.g. `{{{', '.join(f'{k!r}: None' for k in absent)}, ...}}`)."
        )
    for key in absent:
        frame[key] = None
    frame = frame[keys].astype(object)
    return frame.where(frame.notna(), None)
