import matplotlib

matplotlib.use("Agg")

import re

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import sparse

import bioformers as bf


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def _counts():
    return bf.datasets.synthetic(n_obs=120, n_vars=20, seed=0)


@pytest.fixture
def counts(_counts):
    """Raw counts (sparse X, obs 'cell_type'): real cells, then other cells standing in for generated ones."""
    return _counts[::2].copy(), _counts[1::2].copy()


@pytest.fixture
def lognorm(counts):
    """The same cells, log-normalised."""
    for adata in counts:
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    return counts


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def _means(adata, genes=None, cells=None) -> np.ndarray:
    """Per-gene means with NumPy, of `genes` (in that order) over `cells`."""
    adata = adata if genes is None else adata[:, genes]
    X = _dense(adata.X).astype(np.float64)
    return (X if cells is None else X[np.asarray(cells)]).mean(axis=0)


def _r(x, y) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def _title_r(ax: Axes) -> float:
    return float(re.search(r"r = ([-\d.]+)", ax.get_title()).group(1))


def _legend_r(ax: Axes) -> dict[str, float]:
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    return {text.split(": r = ")[0]: float(text.split(": r = ")[1]) for text in texts}


def _points(ax: Axes) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections)


# --- what is drawn ---------------------------------------------------------------------------------


def test_two_panels_and_r_of_the_means(lognorm):
    real, generated = lognorm
    axes = bf.pl.generated_vs_real(real, generated, show=False)
    assert isinstance(axes, list) and len(axes) == 2 and all(isinstance(ax, Axes) for ax in axes)
    assert len(axes[0].figure.axes) == 2
    # every cell in the UMAP (fewer than max_cells), and one point per gene in the mean panel
    assert _points(axes[0]) == real.n_obs + generated.n_obs
    assert [text.get_text() for text in axes[0].get_legend().get_texts()] == ["real (60 cells)", "generated (60 cells)"]
    assert axes[1].collections[0].get_offsets().shape == (20, 2)
    np.testing.assert_allclose(axes[1].collections[0].get_offsets()[:, 0], _means(real))
    np.testing.assert_allclose(axes[1].collections[0].get_offsets()[:, 1], _means(generated))
    assert "20 genes" in axes[1].get_title()
    assert _title_r(axes[1]) == pytest.approx(_r(_means(real), _means(generated)), abs=5e-4)
    # the r is that of bf.metrics.generation_scores
    scores = bf.metrics.generation_scores(real, generated, max_cells=10)
    assert _title_r(axes[1]) == pytest.approx(scores.loc["all", "pearson_mean"], abs=5e-4)


def test_groupby_adds_umaps_by_group_and_r_per_group(lognorm):
    real, generated = lognorm
    # a group only the generated cells have: drawn in its UMAP, left out of the means
    generated.obs["cell_type"] = generated.obs["cell_type"].cat.rename_categories({"type_2": "type_9"})
    axes = bf.pl.generated_vs_real(real, generated, groupby="cell_type", show=False)
    assert len(axes) == 4 and len(axes[0].figure.axes) == 4
    assert axes[2].get_title() == "real cells by cell_type"
    assert axes[3].get_title() == "generated cells by cell_type"
    # each group panel: every cell, the other side in grey underneath
    assert _points(axes[2]) == _points(axes[3]) == real.n_obs + generated.n_obs
    legend = [text.get_text() for text in axes[3].get_legend().get_texts()]
    assert legend == ["type_0", "type_1", "type_2 (real only)", "type_9 (generated only)"]

    r = _legend_r(axes[1])
    assert list(r) == ["type_0", "type_1"]
    for group, value in r.items():
        x = _means(real, cells=real.obs["cell_type"] == group)
        y = _means(generated, cells=generated.obs["cell_type"] == group)
        assert value == pytest.approx(_r(x, y), abs=5e-4)
    assert axes[1].collections[0].get_offsets().shape == (2 * 20, 2)


def test_inputs_are_left_unchanged(counts, deep_snapshot, assert_same_anndata):
    real, generated = counts
    real.obsm["X_umap"] = np.zeros((real.n_obs, 2))
    generated = generated[:50]  # a view is read, not written
    before = deep_snapshot(real), deep_snapshot(generated)
    bf.pl.generated_vs_real(real, generated, groupby="cell_type", normalize=True, show=False)
    assert_same_anndata(before[0], real)
    assert_same_anndata(before[1], generated)
    assert generated.is_view


def test_genes_matched_by_name_in_any_order(lognorm):
    real, generated = lognorm
    aligned = bf.pl.generated_vs_real(real, generated, show=False)
    # generated: genes reversed, one real gene missing, one extra gene
    shuffled = generated[:, generated.var_names[::-1]].copy()
    shuffled = shuffled[:, shuffled.var_names != "gene_3"].copy()
    extra = ad.AnnData(
        X=sparse.csr_matrix(np.ones((shuffled.n_obs, 1), dtype=np.float32)),
        obs=shuffled.obs[[]],
        var=pd.DataFrame(index=["not_in_real"]),
    )
    shuffled = ad.concat([shuffled, extra], axis=1, merge="same")
    axes = bf.pl.generated_vs_real(real, shuffled, show=False)
    shared = [gene for gene in real.var_names if gene != "gene_3"]
    assert "19 genes" in axes[1].get_title()
    assert _title_r(axes[1]) == pytest.approx(_r(_means(real, shared), _means(generated, shared)), abs=5e-4)
    offsets = axes[1].collections[0].get_offsets()
    keep = real.var_names != "gene_3"
    np.testing.assert_allclose(offsets, aligned[1].collections[0].get_offsets()[keep], rtol=1e-6)


def test_genes_restricts_both_panels(lognorm):
    real, generated = lognorm
    genes = ["gene_7", "gene_2", "gene_11", "gene_5"]
    axes = bf.pl.generated_vs_real(real, generated, genes=genes, show=False)
    np.testing.assert_allclose(axes[1].collections[0].get_offsets()[:, 0], _means(real, genes))
    assert _title_r(axes[1]) == pytest.approx(_r(_means(real, genes), _means(generated, genes)), abs=5e-4)


def test_normalize_log_normalises_over_the_compared_genes(counts):
    real, generated = counts
    genes = real.var_names[:15].tolist()
    axes = bf.pl.generated_vs_real(real, generated, genes=genes, normalize=True, show=False)
    expected = []
    for adata in (real, generated):
        subset = adata[:, genes].copy()
        sc.pp.normalize_total(subset, target_sum=1e4)
        sc.pp.log1p(subset)
        expected.append(_means(subset))
    np.testing.assert_allclose(axes[1].collections[0].get_offsets(), np.column_stack(expected), rtol=1e-5)


def test_dense_and_sparse_give_the_same_means_and_pca_stays_sparse(lognorm, monkeypatch):
    real, generated = lognorm
    seen = []
    pca = sc.pp.pca

    def spy(adata, **kwargs):
        seen.append(sparse.issparse(adata.X))
        return pca(adata, **kwargs)

    monkeypatch.setattr(sc.pp, "pca", spy)
    on_sparse = bf.pl.generated_vs_real(real, generated, show=False)
    real.X, generated.X = real.X.toarray(), generated.X.toarray()
    on_dense = bf.pl.generated_vs_real(real, generated, show=False)
    assert seen == [True, False]
    np.testing.assert_allclose(
        on_sparse[1].collections[0].get_offsets(), on_dense[1].collections[0].get_offsets(), rtol=1e-5
    )


def test_max_cells_draws_a_seeded_sample_per_side(lognorm):
    real, generated = lognorm
    axes = bf.pl.generated_vs_real(real, generated, max_cells=25, layer=None, show=False)
    assert _points(axes[0]) == 50
    labels = [text.get_text() for text in axes[0].get_legend().get_texts()]
    assert labels == ["real (25 of 60 cells)", "generated (25 of 60 cells)"]
    # the means still use every cell
    np.testing.assert_allclose(axes[1].collections[0].get_offsets()[:, 0], _means(real))
    again = bf.pl.generated_vs_real(real, generated, max_cells=25, show=False)
    np.testing.assert_array_equal(again[0].collections[0].get_offsets(), axes[0].collections[0].get_offsets())


def test_layer_is_read_from_both(counts):
    real, generated = counts
    for adata in (real, generated):
        adata.layers["log"] = np.log1p(adata.X)
    axes = bf.pl.generated_vs_real(real, generated, layer="log", show=False)
    np.testing.assert_allclose(
        axes[1].collections[0].get_offsets()[:, 1], _dense(generated.layers["log"]).astype(np.float64).mean(0)
    )


def test_return_fig(lognorm):
    fig = bf.pl.generated_vs_real(*lognorm, return_fig=True)
    assert isinstance(fig, Figure) and len(fig.axes) == 2


# --- bad input -------------------------------------------------------------------------------------


def _nan(real, generated):
    generated.X.data[0] = np.nan


def _renamed_genes(real, generated):
    generated.var_names = [f"ENSG{i}" for i in range(generated.n_vars)]


def _two_shared_genes(real, generated):
    generated.var_names = [name if name in ("gene_0", "gene_1") else f"x{name}" for name in generated.var_names]


def _groupby_only_in_real(real, generated):
    del generated.obs["cell_type"]


def _no_shared_group(real, generated):
    generated.obs["cell_type"] = "type_9"


def _negative(real, generated):
    real.X.data[0] = -1.0


BAD = {
    "not an AnnData": (lambda r, g: (r.X, g), {}, TypeError, r"`real` must be an AnnData, not csr_matrix"),
    "empty": (lambda r, g: (r, g[:0].copy()), {}, ValueError, r"`generated` is empty \(0 cells x 20 genes\)"),
    "NaN": (_nan, {}, ValueError, r"`generated\.X` contains NaN or infinite values"),
    "missing layer": (None, {"layer": "lgo"}, KeyError, r"Layer 'lgo' not found in `real\.layers`.*Did you mean 'log'"),
    "groupby missing in generated": (
        _groupby_only_in_real,
        {"groupby": "cell_type"},
        KeyError,
        r"`groupby='cell_type'` is not a column of `generated\.obs`",
    ),
    "misspelled groupby": (
        None,
        {"groupby": "cell_typ"},
        KeyError,
        r"not a column of `real\.obs`.*Did you mean 'cell_type'",
    ),
    "no shared group": (
        _no_shared_group,
        {"groupby": "cell_type"},
        ValueError,
        r"No group of `obs\['cell_type'\]` has both real and generated cells.*generated cells of 'type_9'",
    ),
    "no shared gene": (_renamed_genes, {}, ValueError, r"share 0 gene\(s\).*same gene identifiers.*'ENSG0'"),
    "too few shared genes": (_two_shared_genes, {}, ValueError, r"share 2 gene\(s\).*needs at least 3"),
    "unknown gene": (
        None,
        {"genes": ["gene_1", "gene_2", "gne_3"]},
        KeyError,
        r"`genes` 'gne_3' not in `real\.var_names`\. Did you mean 'gene_3'",
    ),
    "normalize negative": (
        _negative,
        {"normalize": True},
        ValueError,
        r"`normalize=True`.*`real\.X` has negative values.*`normalize=False`",
    ),
    "too few cells": (lambda r, g: (r[:2].copy(), g[:2].copy()), {}, ValueError, r"too few for a UMAP.*at least 5"),
    "n_pcs": (None, {"n_pcs": 0}, ValueError, r"`n_pcs=0` must be an integer >= 1"),
    "max_cells": (None, {"max_cells": 1}, ValueError, r"`max_cells=1` must be an integer >= 2"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_raises_before_any_computation(case, lognorm, monkeypatch):
    spoil, kwargs, error, match = BAD[case]
    real, generated = lognorm
    for adata in (real, generated):
        adata.layers["log"] = adata.X.copy()
    spoiled = spoil(real, generated) if spoil is not None else None
    real, generated = spoiled if spoiled is not None else (real, generated)

    def computed(*args, **kwargs):
        raise AssertionError("computed before the input was checked")

    for function in (sc.pp, "normalize_total"), (sc.pp, "pca"), (sc.pp, "neighbors"), (sc.tl, "umap"):
        monkeypatch.setattr(*function, computed)
    with pytest.raises(error, match=match):
        bf.pl.generated_vs_real(real, generated, show=False, **kwargs)
    assert not plt.get_fignums()
