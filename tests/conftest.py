"""Shared fixtures: small synthetic counts and a tiny model, trained once per test session.

Training is the slow part of the suite, so each trained model is built once (``scope="session"``);
tests that write into an AnnData take a ``.copy()`` first.
"""

from __future__ import annotations

import numpy as np
import pytest
import scvi

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
