"""``bf.tl.grn``: a planted regulator is found, rows regulate columns, groups, and clear errors before writing."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import bioformers as bf
from bioformers.data import log_normalize
from bioformers.tl._genes import _subsample
from bioformers.tl._grn import _background_genes, _without_shared_shift

N_CELLS, N_GENES = 600, 20
REGULATOR, TARGET = "REG", "TARGET"


def _planted(*, coupled: bool, seed: int = 0) -> ad.AnnData:
    """Counts where REG is on in half the cells and, if ``coupled``, TARGET follows it (10x higher when on)."""
    rng = np.random.default_rng(seed)
    on = rng.random(N_CELLS) < 0.5
    means = rng.uniform(2, 10, size=(1, N_GENES)).repeat(N_CELLS, axis=0)
    means[:, 0] = np.where(on, 20, 0.05)
    target_on = on if coupled else rng.random(N_CELLS) < 0.5
    means[:, 1] = np.where(target_on, 20, 2)
    counts = rng.poisson(means).astype(np.float32)
    names = [REGULATOR, TARGET] + [f"G{i}" for i in range(N_GENES - 2)]
    groups = pd.Categorical(np.where(np.arange(N_CELLS) % 2, "a", "b"))
    obs = pd.DataFrame({"group": groups}, index=[f"c{i}" for i in range(N_CELLS)])
    return ad.AnnData(sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=names))


@pytest.fixture(scope="module")
def planted_models(pretrain_kwargs):
    """Tiny models on data with and without the planted REG -> TARGET dependence."""
    out = {}
    for coupled in (True, False):
        adata = _planted(coupled=coupled)
        model = bf.tl.pretrain(adata, **(pretrain_kwargs | {"max_epochs": 8}))
        out[coupled] = (model, adata)
    return out


def test_knockout_finds_the_planted_target(planted_models):
    weights = {}
    for coupled, (model, adata) in planted_models.items():
        data = adata.copy()
        bf.tl.grn(data, model, n_cells=None)
        row = data.varp["bioformers_grn"][data.var_names.get_loc(REGULATOR)]
        weights[coupled] = row[data.var_names.get_loc(TARGET)]
        if coupled:
            # knocking REG out lowers TARGET more than any other gene, and with the right sign
            assert np.argmax(np.abs(row)) == data.var_names.get_loc(TARGET)
            assert row[data.var_names.get_loc(TARGET)] > 0
    assert abs(weights[True]) > 3 * abs(weights[False])  # 5.1 against -0.27 (seed 0)


def test_rows_are_regulators(planted_models):
    model, adata = planted_models[True]
    data = adata.copy()
    bf.tl.grn(data, model, regulators=[REGULATOR], n_cells=100)
    grn = data.varp["bioformers_grn"]
    nonzero_rows = np.flatnonzero(np.abs(grn).sum(axis=1))
    assert nonzero_rows.tolist() == [data.var_names.get_loc(REGULATOR)]
    assert grn[0, 0] == 0  # no self-loop
    # the row is the raw knockout effect minus a multiple of the background genes' mean effect
    cells, _ = _subsample(adata.n_obs, {}, 100, 0)  # the cells the tool read
    background = _background_genes(model, data, cells, seed=0)
    raw = model.get_knockout_effects(indices=cells, regulators=np.union1d([0], background)).astype(np.float64)
    shared = raw[background[background != 0]].mean(axis=0)
    shared[0] = 0  # REG's own column is no target
    removed = raw[0] - grn[0]
    assert np.linalg.norm(removed) > 0
    np.testing.assert_allclose(removed, (removed @ shared / (shared @ shared)) * shared, atol=1e-5)
    assert abs(grn[0] @ shared) < 1e-4 * np.linalg.norm(raw[0]) * np.linalg.norm(shared)


def test_shared_shift_is_projected_out_of_each_row():
    # genes 2 and 3 are the background; knocking either out raises gene 1 by 2 (the shared shift)
    effects = np.array([[0, 1.0, 3.0, 1.0], [0, 0, 0, 0], [0, 2.0, 0, 0], [0, 2.0, 0, 0]])
    out = _without_shared_shift(effects, rows=np.array([0, 2]), background=np.array([2, 3]))
    np.testing.assert_allclose(out[0], [0, 0, 3.0, 1.0])  # its part along [0, 2, 0, 0] removed
    # gene 2, itself background, is corrected with the other background genes only: all of it is shared
    np.testing.assert_allclose(out[2], [0, 0, 0, 0], atol=1e-12)
    np.testing.assert_array_equal(out[1], effects[1])  # rows not asked for are left alone


def test_attention_rows_are_what_targets_pay_their_regulator(planted_models):
    model, adata = planted_models[True]
    data = adata.copy()
    bf.tl.grn(data, model, method="attention", n_cells=None)
    weights = model.get_attention(data, layer=0, keep_heads=True)  # target x regulator x head (1 layer)
    expected = (weights - weights.mean(axis=0, keepdims=True)).mean(axis=-1).T
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(data.varp["bioformers_grn"], expected, rtol=1e-5, atol=1e-7)
    assert data.uns["bioformers_grn"]["params"]["signed"] is False


def test_correlation_per_group_needs_no_model():
    adata = _planted(coupled=True)
    bf.tl.grn(adata, method="correlation", groupby="group", n_cells=None)
    for group in ("a", "b"):
        cells = (adata.obs["group"] == group).to_numpy()
        expected = bf.metrics.correlation_grn(log_normalize(adata.X[cells]))
        np.testing.assert_allclose(adata.varp[f"bioformers_grn_{group}"], expected, atol=1e-6)
    record = adata.uns["bioformers_grn"]
    assert record["groups"]["key"] == ["bioformers_grn_a", "bioformers_grn_b"]
    assert record["groups"]["n_cells"] == [N_CELLS // 2, N_CELLS // 2]
    assert "model" not in record["params"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "knockoutt"}, ValueError, "Did you mean 'knockout'"),
        ({"regulators": ["NOT_A_GENE"]}, KeyError, "not among the genes"),
        ({"n_cells": 1}, ValueError, "at least 2"),
        ({"groupby": "single"}, ValueError, "single cell"),
        ({"layer": "count"}, KeyError, "not found"),
    ],
)
def test_bad_input_is_refused_before_writing(planted_models, snapshot, assert_unchanged, kwargs, error, match):
    model, adata = planted_models[True]
    data = adata.copy()
    data.obs["single"] = pd.Categorical(["alone"] + ["rest"] * (data.n_obs - 1))
    before = snapshot(data)
    with pytest.raises(error, match=match):
        bf.tl.grn(data, model, **kwargs)
    assert_unchanged(before, data)


def test_other_genes_than_the_models_are_refused(planted_models, snapshot, assert_unchanged):
    model, adata = planted_models[True]
    data = adata[:, 1:].copy()
    before = snapshot(data)
    with pytest.raises(ValueError, match="model's genes"):
        bf.tl.grn(data, model)
    assert_unchanged(before, data)


def test_knockout_needs_the_count_decoder(trained, snapshot, assert_unchanged):
    model, adata = trained
    assert model.module.count_head is None  # this fixture trains without it
    data = adata.copy()
    before = snapshot(data)
    with pytest.raises(ValueError, match="count decoder, which this model lacks"):
        bf.tl.grn(data, model)
    assert_unchanged(before, data)
