"""Input checks shared by every entry point.

Each check raises before anything is written, with a message that names the problem and the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import h5py
import numpy as np
from anndata.abc import CSCDataset, CSRDataset
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData


def get_matrix(adata: AnnData, layer: str | None):
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error when the layer is missing."""
    if layer is None:
        if adata.X is None:
            raise ValueError("`adata.X` is empty. Pass `layer=` naming the layer that holds the counts.")
        return adata.X
    if layer not in adata.layers:
        available = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise KeyError(
            f"Layer {layer!r} not found in `adata.layers` (available: {available}). Pass an existing `layer=`."
        )
    return adata.layers[layer]


def _stored_values(X) -> np.ndarray:
    """The explicitly stored values of a dense or sparse matrix (no densification)."""
    if sparse.issparse(X):
        return np.asarray(X.data)
    return np.asarray(X)


def check_counts(X, *, where: str = "adata.X", require_integer: bool = True) -> None:
    """Check that ``X`` holds finite, non-negative (integer) values and that no cell is empty."""
    if isinstance(X, CSRDataset | CSCDataset | h5py.Dataset):
        raise TypeError(
            f"{where} is on disk (a backed AnnData), and this step needs it in memory. Load it with "
            "`adata = adata.to_memory()`; `bf.tl.embed` and `bf.tl.predict` read a backed AnnData in chunks themselves."
        )
    values = _stored_values(X)
    if not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"{where} has dtype {values.dtype}; expected numeric counts.")
    if values.size and not np.isfinite(values).all():
        raise ValueError(f"{where} contains NaN or infinite values. Remove or fill them before calling bioformers.")
    if values.size and values.min() < 0:
        raise ValueError(
            f"{where} contains negative values; bioformers needs raw counts. Pass `layer=` naming the raw-count layer."
        )
    if require_integer and values.size and not np.array_equal(values, np.round(values)):
        raise ValueError(
            f"{where} contains non-integer values, but raw counts are required here (it looks log-normalised or "
            "scaled). Pass `layer=` naming the raw-count layer, or bin with `normalize=False` if the values are "
            "already normalised."
        )
    totals = np.asarray(X.sum(axis=1)).ravel()
    n_empty = int((totals == 0).sum())
    if n_empty:
        raise ValueError(
            f"{where} has {n_empty} cell(s) with no counts. "
            "Remove them first, e.g. `sc.pp.filter_cells(adata, min_counts=1)`."
        )


def check_backed_writable(adata: AnnData, *, copy: bool) -> None:
    """A tool may add results to a backed AnnData (in memory), but not to a view of one, nor to a copy of one."""
    if not adata.isbacked:
        return
    if adata.is_view:
        raise ValueError(
            "This is a view of a backed AnnData: anndata would have to load it into memory whole to add results. "
            "Call the tool on the backed AnnData itself, or load the view with `.to_memory()`."
        )
    if copy:
        raise ValueError(
            "`copy=True` would load the backed AnnData into memory whole. Pass `copy=False`: results are added to "
            "the AnnData in memory and the file is left unchanged (save them with `adata.write()`)."
        )


def check_unique_var_names(adata: AnnData) -> None:
    """Gene names are the model's vocabulary: they must be unique."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(f"`adata.var_names` are not unique (e.g. {dup}). Call `adata.var_names_make_unique()` first.")


def check_obs_key(adata: AnnData, key: str | None, *, argument: str) -> None:
    """A column named by ``batch_key=``/``labels_key=`` must exist in ``adata.obs``."""
    if key is not None and key not in adata.obs.columns:
        raise KeyError(
            f"`{argument}={key!r}` is not a column of `adata.obs` (columns: {', '.join(map(str, adata.obs.columns))})."
        )
