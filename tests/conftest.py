"""Shared fixtures: small synthetic counts and a tiny model, trained once per test session.

Training is the slow part of the suite, so each trained model is built once (``scope="session"``);
tests that write into an AnnData take a ``.copy()`` first.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pytest
import scvi
from scipy import sparse

import bioformers as bf

N_OBS, N_VARS = 200, 40
# max_seq_len=24 keeps 23 of the 40 genes per cell, so gene sampling is exercised; some cells
# of the synthetic data have more expressed genes than that, some fewer.
TINY_MODEL = {"n_hidden": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 24}
# accelerator="cpu": the suite checks bit-exact repeatability, which is a promise for one device.
TINY_TRAIN = {"batch_size": 32, "enable_progress_bar": False, "accelerator": "cpu"}


@pytest.fixture(scope="session")
def tiny_model() -> dict:
    """Size arguments of a tiny BioFormer (1 layer, d=16)."""
    return dict(TINY_MODEL)


@pytest.fixture(scope="session")
def pretrain_kwargs() -> dict:
    """Arguments of ``bf.tl.pretrain`` for a tiny, fast, seeded run."""
    return TINY_MODEL | TINY_TRAIN | {"max_epochs": 2, "lr": 3e-3, "seed": 0}


@pytest.fixture(scope="session")
def _counts():
    return bf.datasets.synthetic(n_obs=N_OBS, n_vars=N_VARS)


@pytest.fixture
def counts(_counts):
    """Raw synthetic counts (sparse X, obs 'cell_type' and 'batch'); a fresh copy per test."""
    return _counts.copy()


@pytest.fixture(scope="session")
def trained(_counts):
    """``(model, adata)``: a tiny BioFormer trained for a few epochs through the model API.

    ``adata`` is the model's training AnnData; copy it before writing into it.
    """
    adata = _counts.copy()
    bf.pp.bin(adata)
    scvi.settings.seed = 0
    bf.BioFormer.setup_anndata(adata)
    model = bf.BioFormer(adata, **TINY_MODEL)
    model.train(max_epochs=4, lr=3e-3, devices=1, **TINY_TRAIN)
    return model, adata


@pytest.fixture(scope="session")
def pretrained(_counts, pretrain_kwargs):
    """``(model, adata)`` from ``bf.tl.pretrain`` on raw counts with ``pretrain_kwargs``.

    ``adata`` holds everything pretrain wrote; copy it before writing into it.
    """
    adata = _counts.copy()
    model = bf.tl.pretrain(adata, **pretrain_kwargs)
    return model, adata


def anndata_state(adata) -> dict:
    """What a failed call must leave untouched: names, columns, keys and the values of X."""
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.array(adata.X, copy=True)
    return {
        "shape": adata.shape,
        "obs_names": adata.obs_names.tolist(),
        "var_names": adata.var_names.tolist(),
        "obs": adata.obs.columns.tolist(),
        "var": adata.var.columns.tolist(),
        "layers": sorted(adata.layers.keys()),
        "obsm": sorted(adata.obsm.keys()),
        "varm": sorted(adata.varm.keys()),
        "varp": sorted(adata.varp.keys()),
        "uns": sorted(adata.uns.keys()),
        "X_type": type(adata.X),
        "X": X,
    }


@pytest.fixture(scope="session")
def assert_unchanged():
    """``assert_unchanged(before, adata)`` compares ``anndata_state`` before and after a call."""

    def check(before: dict, adata) -> None:
        before, after = dict(before), anndata_state(adata)
        X_before, X_after = before.pop("X"), after.pop("X")
        assert after == before
        np.testing.assert_array_equal(X_after, X_before)  # NaN-aware

    return check


@pytest.fixture(scope="session")
def snapshot():
    """``snapshot(adata)`` records the state :func:`assert_unchanged` compares against."""
    return anndata_state


def _same_value(before, after, where: str) -> None:
    """``after`` equals ``before`` in type, shape, dtype and values (NaN equals NaN), recursing into dicts."""
    if isinstance(before, Mapping):
        assert isinstance(after, Mapping), where
        assert list(after.keys()) == list(before.keys()), where
        for key in before:
            _same_value(before[key], after[key], f"{where}[{key!r}]")
    elif isinstance(before, pd.DataFrame):
        pd.testing.assert_frame_equal(after, before, obj=where)
    elif isinstance(before, pd.Index):
        pd.testing.assert_index_equal(after, before, obj=where)
    elif sparse.issparse(before) or isinstance(before, np.ndarray):
        assert type(after) is type(before), where
        assert after.dtype == before.dtype and after.shape == before.shape, where
        dense = (lambda m: m.toarray()) if sparse.issparse(before) else np.asarray
        np.testing.assert_array_equal(dense(after), dense(before), err_msg=where)
    elif isinstance(before, list | tuple):
        assert type(after) is type(before) and len(after) == len(before), where
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            _same_value(b, a, f"{where}[{i}]")
    else:
        assert type(after) is type(before), where
        assert after == before or (before != before and after != after), where  # NaN scalars


def full_snapshot(adata) -> dict:
    """Deep copies of everything an AnnData holds: X, layers, obs, var, obsm, varm, obsp, varp and uns."""
    memory = adata.to_memory() if adata.isbacked else adata
    return {
        "is_view": adata.is_view,
        "isbacked": adata.isbacked,
        "obs_names": adata.obs_names.copy(),
        "var_names": adata.var_names.copy(),
        "X": None if memory.X is None else memory.X.copy(),
        "layers": {k: v.copy() for k, v in memory.layers.items()},
        "obs": memory.obs.copy(),
        "var": memory.var.copy(),
        "obsm": {k: v.copy() for k, v in memory.obsm.items()},
        "varm": {k: v.copy() for k, v in memory.varm.items()},
        "obsp": {k: v.copy() for k, v in memory.obsp.items()},
        "varp": {k: v.copy() for k, v in memory.varp.items()},
        "uns": copy.deepcopy(dict(memory.uns)),
    }


@pytest.fixture(scope="session")
def assert_same_anndata():
    """``assert_same_anndata(before, adata)``: ``adata`` still equals ``full_snapshot`` ``before``, key by key."""

    def check(before: dict, adata) -> None:
        _same_value(before, full_snapshot(adata), "adata")

    return check


@pytest.fixture(scope="session")
def deep_snapshot():
    """``deep_snapshot(adata)`` records what :func:`assert_same_anndata` compares against."""
    return full_snapshot


@pytest.fixture(scope="session")
def saved(trained, tmp_path_factory):
    """Directory where the ``trained`` model was saved (read it, don't write into it)."""
    model, _ = trained
    path = tmp_path_factory.mktemp("saved") / "model"
    model.save(str(path))
    return path
