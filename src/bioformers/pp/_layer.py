"""The layer of value tokens: the bound of a token, and writing the tokens and their record into an AnnData."""

from __future__ import annotations

from numbers import Integral
from typing import TYPE_CHECKING

import numpy as np
from scanpy import logging as logg

from .._keys import Keys

if TYPE_CHECKING:
    from datetime import datetime

    from anndata import AnnData
    from scipy import sparse

#: The largest token: tokens are stored as ``int16``.
MAX_TOKEN = np.iinfo(np.int16).max


def is_int(value, low: int, high: int) -> bool:
    """Whether ``value`` is an integer (not a bool) from ``low`` to ``high``."""
    return isinstance(value, Integral) and not isinstance(value, bool) and low <= value <= high


def write_tokens(
    adata: AnnData,
    tokens: sparse.csr_matrix,
    params: dict,
    n_tokens: int,
    *,
    key_added: str,
    copy: bool,
    start: datetime,
    tokens_are: str,
    params_are: str,
) -> AnnData | None:
    """Write tokens to ``adata.layers[key]`` and their record to ``adata.uns[key]``, ``key = f"{key_added}_binned"``.

    Parameters
    ----------
    adata
        The AnnData tokenised; with ``copy``, a copy of it is written to instead.
    tokens
        The tokens, ``int16`` CSR (n_obs, n_vars).
    params
        How they were made (:func:`bioformers._record.params_record`).
    n_tokens
        Size of the value vocabulary.
    key_added
        Base key.
    copy
        Write to a copy of ``adata`` and return it.
    start
        When tokenising started (what ``logg.info`` returned), for the log's timing.
    tokens_are
        What the layer holds, in the log.
    params_are
        What the record holds, in the log.

    Returns
    -------
    :class:`~anndata.AnnData` or None
        The copy written to with ``copy``, else `None`.
    """
    adata = adata.copy() if copy else adata
    key = Keys(key_added).binned
    adata.layers[key] = tokens
    adata.uns[key] = {"params": params, "n_tokens": n_tokens}
    logg.info(
        "    finished",
        time=start,
        deep=(
            f"added\n    {key!r}, {tokens_are} (adata.layers)\n"
            f"    {key!r}, {params_are} and `n_tokens={n_tokens}` (adata.uns)"
        ),
    )
    return adata if copy else None
