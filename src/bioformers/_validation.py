"""Input checks shared by every entry point.

Each check raises before anything is written, with a message that names the problem, the key
and the fix. The rules every public function follows (each documents its own choices):

* an empty AnnData (0 cells or 0 genes), duplicate ``obs_names`` or ``var_names``: error;
* counts: NaN, inf, negative values, non-integer values where raw counts are needed, and
  ``float16``, ``object``, ``bool`` or complex dtypes: error;
* cells with no counts: error (``sc.pp.filter_cells(adata, min_counts=1)``); genes with no
  counts: allowed, and the training functions warn;
* a view: functions that write into the AnnData refuse it unless ``copy=True`` (the result is
  then a new AnnData); functions that only read take it;
* a backed AnnData: only where the function says so (embedding, prediction, attention);
* a missing ``layer``/``obs``/``obsm``/``varp`` key: ``KeyError`` suggesting the closest key;
* an ``obs`` column used as categories (``groupby``, ``batch_key``, ``labels_key``,
  ``perturbation_key``) with missing values: error.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.abc import CSCDataset, CSRDataset
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping


def did_you_mean(key: str, options: Iterable) -> str:
    """`` Did you mean 'x'?`` for the existing key closest to ``key``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(key), [str(o) for o in options], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def shown(options: Iterable, limit: int = 10) -> str:
    """Up to ``limit`` keys, quoted and comma-separated, or ``"none"``."""
    options = [str(o) for o in options]
    text = ", ".join(map(repr, options[:limit])) or "none"
    return text + (f" and {len(options) - limit} more" if len(options) > limit else "")


def matrix_name(layer: str | None, *, name: str = "adata") -> str:
    """How messages name the matrix of ``layer``: ``adata.X`` or ``adata.layers['counts']``."""
    return f"{name}.X" if layer is None else f"{name}.layers[{layer!r}]"


def get_matrix(adata: AnnData, layer: str | None, *, name: str = "adata"):
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error when the layer is missing."""
    if layer is None:
        if adata.X is None:
            raise ValueError(f"`{name}.X` is empty. Pass `layer=` naming the layer that holds the counts.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"Layer {layer!r} not found in `{name}.layers` (available: {shown(adata.layers.keys())})."
            f"{did_you_mean(layer, adata.layers.keys())} Pass an existing `layer=`."
        )
    return adata.layers[layer]


def check_anndata(
    adata: AnnData,
    *,
    name: str = "adata",
    copy: bool = False,
    writes: bool = True,
    backed: bool = False,
    cells: bool = True,
) -> None:
    """The checks every entry point runs first, on the AnnData itself (not its values).

    Parameters
    ----------
    adata
        The AnnData passed in.
    name
        The argument's name in messages.
    copy
        The function's ``copy=``: a view is fine when a new AnnData is returned.
    writes
        Whether the function writes into ``adata`` (then a view is refused unless ``copy``).
    backed
        Whether the function supports a backed AnnData.
    cells
        Whether the function reads cells (otherwise 0 cells and ``obs_names`` are not checked).
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"`{name}` must be an AnnData, not {type(adata).__name__}.")
    if adata.n_vars == 0 or (cells and adata.n_obs == 0):
        raise ValueError(
            f"`{name}` is empty ({adata.n_obs} cells x {adata.n_vars} genes). Check the subsetting or filtering "
            "that produced it."
        )
    check_unique_var_names(adata, name=name)
    if cells and not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"`{name}.obs_names` are not unique (e.g. {dup}), so results cannot be matched to cells. "
            f"Call `{name}.obs_names_make_unique()` first."
        )
    if adata.isbacked:
        if not backed:
            raise TypeError(
                f"`{name}` is on disk (a backed AnnData), and this step needs it in memory. Load it with "
                f"`{name} = {name}.to_memory()`; `bf.tl.embed` and `bf.tl.predict` read a backed AnnData in chunks "
                "themselves."
            )
        check_backed_writable(adata, copy=copy)
    elif writes and adata.is_view and not copy:
        raise ValueError(
            f"`{name}` is a view (a subset such as `adata[cells]`), and results written into a view are lost to "
            f"its parent. Make it an AnnData of its own first, `{name} = {name}.copy()`, or pass `copy=True` "
            "where the function offers it."
        )


def _stored_values(X) -> np.ndarray:
    """The explicitly stored values of a dense or sparse matrix (no densification)."""
    if sparse.issparse(X):
        return np.asarray(X.data)
    return np.asarray(X)


def check_dtype(values: np.ndarray, *, where: str) -> None:
    """Counts and bins must be real numbers of a dtype that holds them exactly."""
    dtype = values.dtype
    if dtype == np.float16:
        raise TypeError(
            f"{where} has dtype float16, which holds whole numbers exactly only up to 2,048 and which sparse "
            "arithmetic does not support. Cast it to float32 first, e.g. `adata.X = adata.X.astype(np.float32)`."
        )
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise TypeError(
            f"{where} has dtype {dtype}; expected numeric counts (integer or float32/float64). Convert it, e.g. "
            "`adata.X = adata.X.astype(np.float32)`."
        )


#: Largest value that still reads as log-normalised expression (log1p of counts per 10,000 or per million).
_LOG_NORMALISED_MAX = 15.0


def check_counts(X, *, where: str = "adata.X", require_integer: bool = True, fix: str | None = None) -> None:
    """Check that ``X`` holds finite, non-negative (integer) values of a sound dtype and that no cell is empty.

    Genes with no counts are allowed (see :func:`warn_genes_without_counts`). ``fix`` replaces the
    advice of the "not raw counts" errors (by default: pass ``layer=``) where the caller knows better.
    """
    if isinstance(X, CSRDataset | CSCDataset | h5py.Dataset):
        raise TypeError(
            f"{where} is on disk (a backed AnnData), and this step needs it in memory. Load it with "
            "`adata = adata.to_memory()`; `bf.tl.embed` and `bf.tl.predict` read a backed AnnData in chunks themselves."
        )
    values = _stored_values(X)
    check_dtype(values, where=where)
    if values.size and not np.isfinite(values).all():
        raise ValueError(f"{where} contains NaN or infinite values. Remove or fill them before calling bioformers.")
    if values.size and values.min() < 0:
        raise ValueError(
            f"{where} contains negative values; bioformers needs raw counts. "
            + (fix or "Pass `layer=` naming the raw-count layer.")
        )
    if require_integer and values.size:
        fractional = values != np.round(values)
        if fractional.any():
            raise ValueError(_non_integer_message(values, fractional, where, fix))
    totals = np.asarray(X.sum(axis=1)).ravel()
    n_empty = int((totals == 0).sum())
    if n_empty:
        raise ValueError(
            f"{where} has {n_empty} cell(s) with no counts. "
            "Remove them first, e.g. `sc.pp.filter_cells(adata, min_counts=1)`."
        )


def _non_integer_message(values: np.ndarray, fractional: np.ndarray, where: str, fix: str | None = None) -> str:
    """Say what non-integer values look like and what to do: log-normalised data and scaled counts differ."""
    examples = ", ".join(f"{v:.3g}" for v in np.unique(values[fractional])[:3])
    largest = float(values.max())
    share = f"{fractional.mean():.0%} of its stored values"
    seen = f"{where} holds non-integer values ({share}, e.g. {examples}; largest {largest:.4g})"
    # log1p of counts per 10,000 (or per million) stays below ~15; scaled or corrected counts keep their range
    if largest <= _LOG_NORMALISED_MAX and fix:
        return f"{seen}: it looks log-normalised, and this step needs raw counts. {fix}"
    if fix:
        return f"{seen}: they look like scaled or corrected counts, and this step needs raw counts. {fix}"
    if largest <= _LOG_NORMALISED_MAX:
        return (
            f"{seen}: it looks log-normalised, and this step needs raw counts. Pass `layer=` naming the raw-count "
            "layer (e.g. `adata.layers['counts']`, or `adata.raw.to_adata().X`)."
        )
    return (
        f"{seen}: they look like scaled or corrected counts (e.g. ambient-RNA corrected), and value binning needs "
        "whole counts. Pass `layer=` naming a layer of raw counts if there is one; otherwise round these, "
        "`adata.X = adata.X.rint()` for sparse X or `np.rint(adata.X)` for dense, or use a binning that ranks "
        'values within each cell instead: `binning="segment"` (`bf.tl.pretrain`) or `method="segment"` '
        "(`bf.pp.bin`)."
    )


def warn_genes_without_counts(X, *, where: str) -> None:
    """Warn that genes never expressed in the training data keep untrained gene embeddings."""
    expressed = np.zeros(X.shape[1], dtype=bool)
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
        expressed[X.indices[X.data != 0]] = True
    else:
        expressed = (np.asarray(X) != 0).any(axis=0)
    n_silent = int((~expressed).sum())
    if n_silent:
        warnings.warn(
            f"{where} has {n_silent} gene(s) with no counts in any cell: the model never sees them expressed, and "
            "their gene embeddings stay untrained. Remove them with `sc.pp.filter_genes(adata, min_counts=1)` "
            "unless you need them in the vocabulary.",
            UserWarning,
            stacklevel=3,
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


def check_unique_var_names(adata: AnnData, *, name: str = "adata") -> None:
    """Gene names are the model's vocabulary: they must be unique."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"`{name}.var_names` are not unique (e.g. {dup}). Call `{name}.var_names_make_unique()` first."
        )


def check_obs_key(adata: AnnData, key: str | None, *, argument: str, name: str = "adata") -> None:
    """A column named by ``groupby=``/``batch_key=``/... must exist in ``adata.obs`` and have no missing values."""
    if key is None:
        return
    if key not in adata.obs.columns:
        raise KeyError(
            f"`{argument}={key!r}` is not a column of `{name}.obs` (columns: {shown(adata.obs.columns)})."
            f"{did_you_mean(key, adata.obs.columns)}"
        )
    missing = int(pd.isna(adata.obs[key]).sum())
    if missing:
        raise ValueError(
            f"`{name}.obs[{key!r}]` (`{argument}=`) has {missing} missing value(s) (NaN), which belong to no "
            f"category. Drop those cells, `{name} = {name}[{name}.obs[{key!r}].notna()].copy()`, or fill them with a "
            f"label of their own, e.g. `{name}.obs[{key!r}] = {name}.obs[{key!r}].astype(str)` (NaN becomes 'nan')."
        )


def check_n_groups(n_groups: int, *, argument: str, key: str, limit: int, why: str, limit_argument: str) -> None:
    """Refuse more than ``limit`` groups in one ``obs`` column, naming the cost and both ways around it."""
    if n_groups > limit:
        raise ValueError(
            f"`adata.obs[{key!r}]` (`{argument}=`) has {n_groups} groups, more than `{limit_argument}={limit}`: {why}. "
            f"Subset the AnnData to the groups you want, e.g. `adata[adata.obs[{key!r}].isin([...])].copy()`, "
            f"merge small groups, or raise `{limit_argument}=` if that is intended."
        )


def check_obsm_key(adata: AnnData, key: str, *, fix: str) -> None:
    """``adata.obsm[key]`` must exist: a ``KeyError`` suggesting the closest key and how to compute it."""
    if key not in adata.obsm:
        raise KeyError(
            f"`adata.obsm[{key!r}]` not found (keys: {shown(adata.obsm.keys())})."
            f"{did_you_mean(key, adata.obsm.keys())} {fix}"
        )


def check_control(labels: pd.Series, control: str, key: str) -> None:
    """Raise unless ``control`` is one of the ``labels`` (an ``obs`` column)."""
    present = pd.unique(labels.astype(str))
    if control not in present:
        shown = sorted(present)[:10]
        raise ValueError(
            f"The control label {control!r} is not in `adata.obs[{key!r}]` (labels include {shown}). "
            f"Pass `control=` with the label of control cells."
        )


def check_batch_size(n_obs: int, batch_size: int) -> None:
    """Raise unless ``n_obs`` cells fill at least one batch of ``batch_size``."""
    if n_obs < batch_size:
        raise ValueError(
            f"The AnnData has {n_obs} cells, fewer than one batch (batch_size={batch_size}). "
            f"Pass `batch_size={max(n_obs // 2, 1)}` or smaller."
        )


def check_train_kwargs(kwargs: Mapping[str, Any], *, tool: Callable, train: Callable, where: str) -> None:
    """Refuse keyword arguments that neither ``train`` nor scvi-tools' training nor Lightning's ``Trainer`` takes.

    A tool passes its ``**train_kwargs`` on to ``train``, which passes what it does not know to
    scvi-tools and on to Lightning; a misspelt or misplaced name (``copy=``, ``n_epochs=``) would
    otherwise fail there, after the data were binned, with a message about ``Trainer.__init__``.
    """
    import lightning.pytorch as pl
    from scvi.model.base import UnsupervisedTrainingMixin
    from scvi.train import Trainer

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)

    def options(function: Callable) -> set[str]:
        # arguments without a default are the caller's to fill (data, cells), not options
        parameters = inspect.signature(function).parameters.values()
        return {p.name for p in parameters if p.kind in kinds and p.default is not inspect.Parameter.empty}

    own = options(train)
    passed_on = {
        p.name
        for function in (UnsupervisedTrainingMixin.train, Trainer.__init__, pl.Trainer.__init__)
        for p in inspect.signature(function).parameters.values()
        if p.kind in kinds
    } - {"self", "kwargs", "trainer_kwargs"}
    # Lightning's `fit(ckpt_path=)` reaches the training guard, which says to use `resume_from=` instead
    valid = own | passed_on | {"ckpt_path"}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        suggestion = did_you_mean(unknown[0], options(tool) | valid)
        raise TypeError(
            f"{where} got unexpected keyword argument(s) {unknown}.{suggestion} Besides its own "
            f"options it takes those of training, {sorted(own)}, of scvi-tools' training, and of Lightning's "
            "`Trainer` (e.g. 'strategy', 'num_nodes', 'callbacks', 'gradient_clip_val'; the full list: "
            f"{sorted(passed_on - own)})."
        )


def check_setup_kwargs(kwargs: Mapping[str, Any], *, setup: Callable, where: str, hints: Mapping[str, str]) -> None:
    """Refuse ``setup_anndata`` keyword arguments that scvi-tools' ``register_fields`` would reject deep inside.

    ``**kwargs`` of a ``setup_anndata`` are scvi-tools' registry-transfer arguments, which only make
    sense with ``source_registry`` (as ``load`` passes them). ``hints`` maps a name users bring from
    other models (e.g. ``labels_key``) to what to pass instead.
    """
    if "source_registry" in kwargs or not kwargs:
        return
    unknown = sorted(kwargs)
    names = [p for p in inspect.signature(setup).parameters if p not in ("cls", "self", "adata", "kwargs")]
    advice = " ".join(hints[name] for name in unknown if name in hints) or did_you_mean(unknown[0], names).strip()
    raise TypeError(f"{where} got unexpected keyword argument(s) {unknown}. {advice} It takes {names}.")
