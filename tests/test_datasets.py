import numpy as np
import pytest
from scipy import sparse

import bioformers as bf


def _dense(X):
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


@pytest.fixture(scope="module")
def pbmc():
    return bf.datasets.pbmc3k()


def test_synthetic_same_seed_same_data():
    a, b = bf.datasets.synthetic(seed=3), bf.datasets.synthetic(seed=3)
    np.testing.assert_array_equal(_dense(a.X), _dense(b.X))
    assert a.obs.equals(b.obs)
    c = bf.datasets.synthetic(seed=4)
    assert not np.array_equal(_dense(a.X), _dense(c.X))


@pytest.mark.parametrize(
    ("n_obs", "n_vars", "n_cell_types", "n_batches"), [(300, 100, 3, 2), (50, 20, 5, 3), (7, 4, 1, 1)]
)
def test_synthetic_shapes_and_labels(n_obs, n_vars, n_cell_types, n_batches):
    adata = bf.datasets.synthetic(n_obs, n_vars, n_cell_types=n_cell_types, n_batches=n_batches)
    assert adata.shape == (n_obs, n_vars)
    assert adata.obs["cell_type"].dtype == "category"
    assert adata.obs["batch"].dtype == "category"
    assert adata.obs["cell_type"].cat.categories.tolist() == [f"type_{i}" for i in range(n_cell_types)]
    assert adata.obs["batch"].nunique() == n_batches
    # equal shares: every type is present and sizes differ by at most one
    sizes = adata.obs["cell_type"].value_counts()
    assert sizes.min() >= n_obs // n_cell_types and sizes.max() - sizes.min() <= 1
    assert adata.obs_names.is_unique
    assert adata.var_names[0] == "gene_0" and adata.var_names[-1] == f"gene_{n_vars - 1}"


@pytest.mark.parametrize("n_vars", [1, 100])
def test_synthetic_counts_and_no_empty_cells(n_vars):
    # with one lowly expressed gene many cells would be empty without the guarantee
    adata = bf.datasets.synthetic(400, n_vars, seed=2)
    X = _dense(adata.X)
    assert X.dtype == np.float32
    assert (X >= 0).all()
    np.testing.assert_array_equal(X, np.round(X))
    assert (X.sum(axis=1) > 0).all()


def test_synthetic_sparse_and_dense_hold_the_same_counts():
    sp = bf.datasets.synthetic(sparse=True)
    dense = bf.datasets.synthetic(sparse=False)
    assert sparse.isspmatrix_csr(sp.X)
    assert isinstance(dense.X, np.ndarray)
    np.testing.assert_array_equal(sp.X.toarray(), dense.X)


def test_synthetic_cell_types_have_marker_genes():
    adata = bf.datasets.synthetic(600, 100, n_cell_types=3)
    X = _dense(adata.X)
    for cell_type in adata.obs["cell_type"].cat.categories:
        inside = (adata.obs["cell_type"] == cell_type).to_numpy()
        fold = X[inside].mean(axis=0) / (X[~inside].mean(axis=0) + 0.1)
        assert (fold > 3).sum() >= 3, cell_type


def test_synthetic_batches_have_a_mild_effect():
    adata = bf.datasets.synthetic(2000, 100, n_cell_types=1, n_batches=2)
    X = _dense(adata.X)
    in_0 = (adata.obs["batch"] == "batch_0").to_numpy()
    ratio = X[in_0].mean(axis=0) / X[~in_0].mean(axis=0)
    assert 0.1 < np.median(np.abs(np.log(ratio))) < 0.5


@pytest.mark.parametrize("argument", ["n_obs", "n_vars", "n_cell_types", "n_batches"])
def test_synthetic_rejects_zero_sizes(argument):
    with pytest.raises(ValueError, match=argument):
        bf.datasets.synthetic(**{argument: 0})


def test_pbmc3k_shape_and_labels(pbmc):
    assert pbmc.n_obs == 2638
    assert pbmc.obs["cell_type"].dtype == "category"
    assert pbmc.obs["cell_type"].nunique() == 8
    assert pbmc.obs["cell_type"].value_counts()["CD4 T cells"] == 1144
    assert {"batch", "total_counts", "n_genes_by_counts"} <= set(pbmc.obs.columns)
    assert "gene_ids" in pbmc.var.columns
    assert pbmc.obs_names.is_unique and pbmc.var_names.is_unique
    assert "dataset" in pbmc.uns


def test_pbmc3k_raw_counts(pbmc):
    assert sparse.isspmatrix_csr(pbmc.X)
    assert pbmc.X.dtype == np.float32
    np.testing.assert_array_equal(pbmc.X.data, np.round(pbmc.X.data))
    assert pbmc.X.data.min() >= 0
    totals = np.asarray(pbmc.X.sum(axis=1)).ravel()
    np.testing.assert_array_equal(totals, pbmc.obs["total_counts"].to_numpy())
    assert totals.min() > 0


def test_pbmc3k_every_gene_in_at_least_3_cells(pbmc):
    cells_per_gene = np.diff(pbmc.X.tocsc().indptr)
    assert cells_per_gene.min() >= 3
    assert pbmc.n_vars == 13656


def test_pbmc3k_returns_an_independent_object(pbmc):
    fresh = bf.datasets.pbmc3k()
    fresh.X.data[:] = 0
    fresh.obs["cell_type"] = "x"
    again = bf.datasets.pbmc3k()
    assert again.X.sum() == pbmc.X.sum()
    assert again.obs["cell_type"].nunique() == 8
