"""``bf.tl.in_silico_perturb`` and ``bf.pl.in_silico``: in-silico deletion and overexpression of genes."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import bioformers as bf

matplotlib.use("Agg")

SHIFT, TOWARD, RECORD = "bioformers_in_silico_shift", "bioformers_in_silico_toward", "bioformers_in_silico"
TYPES = ["type_0", "type_1", "type_2"]


@pytest.fixture(scope="module")
def fitted():
    """``(model, adata, markers)``: a tiny model trained on synthetic counts with planted markers per cell type.

    Sequences hold every gene (max_seq_len > n_vars), so a perturbation changes nothing but the gene itself.
    ``markers[type]`` are the type's 3 planted markers, most specific first (highest fold over the other types).
    """
    adata = bf.datasets.synthetic(n_obs=300, n_vars=40, seed=0)
    model = bf.tl.pretrain(
        adata,
        n_hidden=16,
        n_layers=1,
        n_heads=2,
        max_seq_len=64,
        max_epochs=3,
        batch_size=32,
        lr=3e-3,
        seed=0,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    X, labels = adata.X.toarray(), adata.obs["cell_type"].to_numpy()
    markers = {}
    for kind in TYPES:
        fold = (X[labels == kind].mean(axis=0) + 0.1) / (X[labels != kind].mean(axis=0) + 0.1)
        markers[kind] = adata.var_names[np.argsort(-fold)[:3]].tolist()
    return model, adata, markers


@pytest.fixture(scope="module")
def _toward(fitted):
    model, adata, markers = fitted
    adata = adata.copy()
    bf.tl.in_silico_perturb(
        adata, model, markers["type_1"], mode="overexpress", groupby="cell_type", target="type_1", n_random=4
    )
    return adata


@pytest.fixture
def toward(_toward):
    """A copy of the fitted AnnData after overexpressing type_1's markers toward type_1 (4 random genes)."""
    return _toward.copy()


@pytest.fixture
def data(fitted):
    """A fresh copy of the fitted AnnData (raw counts, binned layer, cell types)."""
    return fitted[1].copy()


def _bins(adata, gene: str) -> np.ndarray:
    return adata.layers["bioformers_binned"][:, adata.var_names.get_loc(gene)].toarray().ravel()


def test_delete_writes_shift_with_nan_where_not_expressed(fitted, data):
    model, _, markers = fitted
    genes = [markers["type_0"][0], "gene_0"]
    bf.tl.in_silico_perturb(data, model, genes, groupby="cell_type", groups="type_0", n_random=4)
    shift = data.obsm[SHIFT]
    assert isinstance(shift, pd.DataFrame) and shift.shape == (data.n_obs, 2)
    assert shift.columns.tolist() == genes and shift.index.equals(data.obs_names)
    in_type = (data.obs["cell_type"] == "type_0").to_numpy()
    for gene in genes:
        perturbed = in_type & (_bins(data, gene) > 0)
        np.testing.assert_array_equal(shift[gene].notna().to_numpy(), perturbed)
        assert (shift.loc[perturbed, gene] >= 0).all()
        row = data.uns[RECORD]["genes"].loc[gene]
        assert row["n_cells"] == perturbed.sum()
        assert row["frequency"] == pytest.approx(perturbed.sum() / in_type.sum())
        assert row["mean_shift"] == pytest.approx(shift[gene].mean(), rel=1e-5)
    assert TOWARD not in data.obsm
    params = data.uns[RECORD]["params"]
    assert params["mode"] == "delete" and params["n_cells"] == in_type.sum() and len(params["random_genes"]) == 4
    assert not set(params["random_genes"]) & set(genes)


def test_overexpressing_a_gene_already_at_the_top_bin_shifts_exactly_zero(fitted, data):
    model = fitted[0]
    top = model.module.n_bins - 1
    binned = data.layers["bioformers_binned"].toarray()
    gene = data.var_names[(binned == top).sum(axis=0).argmax()]
    at_top = _bins(data, gene) == top
    assert 0 < at_top.sum() < data.n_obs
    bf.tl.in_silico_perturb(data, model, gene, mode="overexpress", n_random=0)
    shift = data.obsm[SHIFT][gene].to_numpy()
    assert not np.isnan(shift).any()  # every cell is perturbed
    assert (shift[at_top] == 0).all()
    assert (shift[~at_top] > 0).all()
    assert data.uns[RECORD]["params"]["top_bin"] == top
    assert "random" not in data.uns[RECORD] and "shift_z" not in data.uns[RECORD]["genes"]


def test_deleting_planted_markers_shifts_their_type_more_than_random_genes(fitted, data):
    model, _, markers = fitted
    for kind in TYPES:
        bf.tl.in_silico_perturb(data, model, markers[kind], groupby="cell_type", groups=kind, n_random=10)
        table = data.uns[RECORD]["genes"]
        strongest = table.iloc[0]
        assert strongest.name in markers[kind]
        assert strongest["shift_percentile"] == 100
        assert strongest["mean_shift"] > 2 * strongest["random_mean_shift"]  # 2.6x with the count objective
        assert (table["mean_shift"] > table["random_mean_shift"]).all()
        # random genes are matched in frequency to the markers (expressed in most cells), as far as 37 genes allow
        in_type = data[data.obs["cell_type"] == kind].layers["bioformers_binned"]
        all_genes = np.asarray((in_type > 0).mean(axis=0)).ravel()
        assert data.uns[RECORD]["random"]["frequency"].mean() > np.quantile(all_genes, 0.7)


def test_overexpressing_markers_moves_cells_toward_their_type(fitted, data):
    model, _, markers = fitted
    bf.tl.in_silico_perturb(
        data, model, markers["type_2"], mode="overexpress", groupby="cell_type", target="type_2", n_random=10
    )
    toward = data.obsm[TOWARD]
    outside = (data.obs["cell_type"] != "type_2").to_numpy()  # without `groups`, every cell outside the target
    np.testing.assert_array_equal(toward.notna().all(axis=1).to_numpy(), outside)
    table = data.uns[RECORD]["genes"]
    assert (table["mean_toward"] > 0).all()
    assert (table["fraction_toward"] > 0.9).all()
    assert (table["fraction_toward"] > table["random_fraction_toward"]).all()
    assert (table["toward_percentile"] == 100).all()
    assert table["mean_toward"].is_monotonic_decreasing  # strongest effect first


def test_toward_on_a_constructed_pair_equals_the_shift_and_is_positive(fitted):
    """Cell B is cell A with one gene deleted: deleting it in A gives B exactly; overexpressing it in B gives A."""
    model, fitted_data, _ = fitted
    top = model.module.n_bins - 1
    row = fitted_data.layers["bioformers_binned"][0].toarray().ravel()
    gene = int(np.flatnonzero(row)[0])
    a, b = row.copy(), row.copy()
    a[gene], b[gene] = top, 0
    pair = ad.AnnData(
        X=sparse.csr_matrix(np.vstack([a, b]).astype(np.float32)),
        obs=pd.DataFrame({"state": pd.Categorical(["A", "B"])}, index=["a", "b"]),
        var=pd.DataFrame(index=fitted_data.var_names.copy()),
        layers={"bioformers_binned": sparse.csr_matrix(np.vstack([a, b]).astype(np.int16))},
    )
    name = pair.var_names[gene]
    bf.tl.in_silico_perturb(pair, model, name, groupby="state", target="B", n_random=0)
    shift, toward = pair.obsm[SHIFT][name], pair.obsm[TOWARD][name]
    assert toward["a"] > 0 and np.isnan(toward["b"])
    assert toward["a"] == pytest.approx(shift["a"], abs=1e-6)
    bf.tl.in_silico_perturb(pair, model, name, mode="overexpress", groupby="state", target="A", n_random=0)
    toward = pair.obsm[TOWARD][name]
    assert toward["b"] > 0 and toward["b"] == pytest.approx(pair.obsm[SHIFT][name]["b"], abs=1e-6)
    assert pair.uns[RECORD]["genes"].loc[name, "fraction_toward"] == 1


def test_a_gene_no_chosen_cell_expresses_has_nan_shift_and_zero_cells(fitted, data):
    model, _, markers = fitted
    gene = markers["type_0"][0]
    silent = _bins(data, gene) == 0
    bf.tl.in_silico_perturb(data, model, [gene, "gene_0"], cells=silent, n_random=0)
    assert data.obsm[SHIFT][gene].isna().all()
    row = data.uns[RECORD]["genes"].loc[gene]
    assert row["n_cells"] == 0 and np.isnan(row["mean_shift"])
    assert data.uns[RECORD]["genes"].index[-1] == gene  # NaN effects sort last


def test_repeated_calls_give_identical_results(fitted, data):
    model, _, markers = fitted
    kwargs = {"groupby": "cell_type", "target": "type_2", "n_random": 3, "seed": 3}
    first = bf.tl.in_silico_perturb(data, model, markers["type_2"], mode="overexpress", copy=True, **kwargs)
    second = bf.tl.in_silico_perturb(data, model, markers["type_2"], mode="overexpress", copy=True, **kwargs)
    for key in (SHIFT, TOWARD):
        pd.testing.assert_frame_equal(first.obsm[key], second.obsm[key])
    pd.testing.assert_frame_equal(first.uns[RECORD]["genes"], second.uns[RECORD]["genes"])
    pd.testing.assert_frame_equal(first.uns[RECORD]["random"], second.uns[RECORD]["random"])


def test_results_survive_write_and_read_h5ad(toward, tmp_path):
    data = toward
    data.write_h5ad(tmp_path / "in_silico.h5ad")
    back = ad.read_h5ad(tmp_path / "in_silico.h5ad")
    for key in (SHIFT, TOWARD):
        pd.testing.assert_frame_equal(back.obsm[key], data.obsm[key])
    for key in ("genes", "random"):
        pd.testing.assert_frame_equal(back.uns[RECORD][key], data.uns[RECORD][key])
    params, read = data.uns[RECORD]["params"], back.uns[RECORD]["params"]
    assert read["genes"].tolist() == params["genes"] and read["target"] == "type_1"
    assert read["random_genes"].tolist() == params["random_genes"]


def test_a_second_call_replaces_the_first(fitted, data):
    model, _, markers = fitted
    bf.tl.in_silico_perturb(data, model, markers["type_1"], groupby="cell_type", target="type_1", n_random=2)
    bf.tl.in_silico_perturb(data, model, "gene_0", n_random=0)
    assert data.obsm[SHIFT].columns.tolist() == ["gene_0"]
    assert TOWARD not in data.obsm  # it described the first call's genes
    assert data.uns[RECORD]["genes"].index.tolist() == ["gene_0"]


def test_copy_returns_results_and_leaves_the_input_unchanged(fitted, data, deep_snapshot, assert_same_anndata):
    model, _, markers = fitted
    before = deep_snapshot(data)
    result = bf.tl.in_silico_perturb(data, model, markers["type_0"], n_random=2, copy=True)
    assert_same_anndata(before, data)
    assert result.obsm[SHIFT].shape == (data.n_obs, 3)


def test_raw_counts_dense_or_binned_layer_give_the_same_result(fitted, data):
    model, _, markers = fitted
    kwargs = {"groupby": "cell_type", "groups": "type_0", "n_random": 3}
    reference = bf.tl.in_silico_perturb(data, model, markers["type_0"], copy=True, **kwargs)
    raw = data.copy()
    del raw.layers["bioformers_binned"], raw.uns["bioformers_binned"]
    bf.tl.in_silico_perturb(raw, model, markers["type_0"], **kwargs)
    assert "bioformers_binned" in raw.layers  # binned like the training data, and kept
    dense = data.copy()
    dense.layers["bioformers_binned"] = dense.layers["bioformers_binned"].toarray()
    bf.tl.in_silico_perturb(dense, model, markers["type_0"], **kwargs)
    for other in (raw, dense):
        pd.testing.assert_frame_equal(other.obsm[SHIFT], reference.obsm[SHIFT])
        pd.testing.assert_frame_equal(other.uns[RECORD]["genes"], reference.uns[RECORD]["genes"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"genes": ["gene_1", "gen_3"]}, KeyError, "not among the model's 40 genes.*Did you mean 'gene_3'"),
        ({"genes": []}, ValueError, "`genes` is empty"),
        ({"mode": "knockout"}, ValueError, "`mode` must be 'delete' or 'overexpress'"),
        ({"groupby": "cell_type", "target": "type_9"}, KeyError, "'type_9' is not a category.*Did you mean 'type_2'"),
        ({"groupby": "cell_type", "groups": ["type_0", "typ_1"]}, KeyError, "'typ_1' is not a category"),
        ({"target": "type_1"}, ValueError, "pass `groupby=`"),
        ({"groupby": "celltype", "target": "type_1"}, KeyError, "Did you mean 'cell_type'"),
        ({"cells": [True, False]}, ValueError, "boolean mask with one entry per cell"),
        ({"cells": "all"}, ValueError, "boolean mask"),
        ({"n_random": -1}, ValueError, "`n_random` must be a whole number"),
        ({"groupby": "cell_type", "groups": "type_0", "cells": "none"}, ValueError, "No cell is left to perturb"),
    ],
)
def test_bad_input_is_refused_and_leaves_the_anndata_unchanged(
    fitted, data, kwargs, error, match, deep_snapshot, assert_same_anndata
):
    model = fitted[0]
    kwargs = {"genes": "gene_1"} | kwargs
    if isinstance(kwargs.get("cells"), str) and kwargs["cells"] == "none":
        kwargs["cells"] = np.zeros(data.n_obs, dtype=bool)
    before = deep_snapshot(data)
    with pytest.raises(error, match=match):
        bf.tl.in_silico_perturb(data, model, **kwargs)
    assert_same_anndata(before, data)


def test_untrained_model_and_other_genes_are_refused(fitted, data, deep_snapshot, assert_same_anndata):
    model = fitted[0]
    fresh = data.copy()
    bf.BioFormer.setup_anndata(fresh)
    untrained = bf.BioFormer(fresh, n_hidden=16, n_layers=1, n_heads=2)
    before = deep_snapshot(data)
    with pytest.raises(RuntimeError, match="not trained"):
        bf.tl.in_silico_perturb(data, untrained, "gene_1")
    assert_same_anndata(before, data)
    subset = data[:, 1:].copy()
    before = deep_snapshot(subset)
    with pytest.raises(ValueError, match="exactly the model's genes"):
        bf.tl.in_silico_perturb(subset, model, "gene_1")
    assert_same_anndata(before, subset)
    with pytest.raises(ValueError, match="is a view"):
        bf.tl.in_silico_perturb(data[:50], model, "gene_1")


@pytest.mark.parametrize("kind", ["shift", "toward", "cells"])
def test_plot_returns_a_figure_for_each_kind(fitted, toward, kind):
    markers, data = fitted[2], toward
    fig = bf.pl.in_silico(data, kind=kind, return_fig=True)
    ax = fig.axes[0]
    labels = [tick.get_text() for tick in ax.get_yticklabels()]
    order = data.uns[RECORD]["genes"].index
    assert labels == [f"{gene} ({n})" for gene, n in zip(order, data.uns[RECORD]["genes"]["n_cells"], strict=True)]
    assert "random genes" in " ".join(ax.get_legend_handles_labels()[1])
    ax = bf.pl.in_silico(data, markers["type_1"][:1], kind=kind, show=False)
    assert len(ax.get_yticklabels()) == 1
    matplotlib.pyplot.close("all")


def test_plot_errors_name_the_tool_to_run(fitted, data):
    with pytest.raises(KeyError, match=r"Run `bf.tl.in_silico_perturb\(adata, model, genes\)` first"):
        bf.pl.in_silico(data)
    bf.tl.in_silico_perturb(data, fitted[0], "gene_0", n_random=0)
    with pytest.raises(ValueError, match="needs a target state"):
        bf.pl.in_silico(data, kind="toward")
    with pytest.raises(KeyError, match=r"were not perturbed.*Did you mean 'gene_0'"):
        bf.pl.in_silico(data, "gene_O")
    with pytest.raises(ValueError, match="`kind` must be one of"):
        bf.pl.in_silico(data, kind="violin")
