import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

import bioformers as bf
from bioformers.metrics._generation import _mmd

COLUMNS = ["n_real", "n_generated", "pearson_mean", "r2_mean", "pearson_var", "mmd", "c2st_auc", "de_overlap"]


@pytest.fixture(scope="session")
def _cells():
    adata = bf.datasets.synthetic(n_obs=360, n_vars=40, seed=0)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


@pytest.fixture
def halves(_cells):
    """Two halves of one log-normalised synthetic sample (sparse X, obs 'cell_type'): real, then 'generated'."""
    return _cells[::2].copy(), _cells[1::2].copy()


def _anndata(X, labels=None, genes=None, *, key="cell_type"):
    genes = genes or [f"g{j}" for j in range(np.shape(X)[1])]
    obs = pd.DataFrame(index=[f"c{i}" for i in range(np.shape(X)[0])])
    if labels is not None:
        obs[key] = pd.Categorical(labels)
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


# --- scores --------------------------------------------------------------------------------------


def test_halves_of_one_sample_score_as_indistinguishable(halves):
    real, generated = halves
    scores = bf.metrics.generation_scores(real, generated)
    assert scores.columns.tolist() == COLUMNS
    assert scores.index.tolist() == ["all"] and scores.index.name == "group"
    row = scores.loc["all"]
    assert row["n_real"] == row["n_generated"] == 180
    assert row["pearson_mean"] > 0.95 and row["r2_mean"] > 0.9 and row["pearson_var"] > 0.9
    assert abs(row["mmd"]) < 0.01
    assert 0.35 < row["c2st_auc"] < 0.65
    assert np.isnan(row["de_overlap"])

    per_type = bf.metrics.generation_scores(real, generated, groupby="cell_type", n_top_genes=5)
    assert per_type.index.tolist() == ["type_0", "type_1", "type_2"] and per_type.index.name == "cell_type"
    assert (per_type["pearson_mean"] > 0.9).all()
    assert 0.3 < per_type["c2st_auc"].mean() < 0.7
    # each type's 5 planted markers stand out in both halves
    assert (per_type["de_overlap"] >= 0.6).all()


def test_shuffled_genes_and_shifted_cells_are_told_apart(halves):
    real, generated = halves
    same = bf.metrics.generation_scores(real, generated).loc["all"]

    shuffled = generated.copy()
    shuffled.X = generated.X[:, np.random.default_rng(0).permutation(generated.n_vars)]
    scores = bf.metrics.generation_scores(real, shuffled).loc["all"]
    assert scores["pearson_mean"] < 0.7 < same["pearson_mean"]
    assert scores["c2st_auc"] > 0.95
    assert scores["mmd"] > 10 * max(same["mmd"], 0.01)

    shifted = generated.copy()
    shifted.X = generated.X.toarray() + 3.0
    scores = bf.metrics.generation_scores(real, shifted).loc["all"]
    # a shift keeps the correlations and the variances, but not the means themselves
    assert scores["pearson_mean"] == pytest.approx(same["pearson_mean"], abs=1e-6)
    assert scores["pearson_var"] == pytest.approx(same["pearson_var"], abs=1e-6)
    assert scores["r2_mean"] < 0.5 < same["r2_mean"]
    assert scores["c2st_auc"] > 0.95
    assert scores["mmd"] > 10 * max(same["mmd"], 0.01)


def test_mmd_is_the_unbiased_estimate_with_the_median_bandwidth():
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [3.0]])
    # squared distances of the pooled points: 1, 0, 9, 1, 4, 9 -> median 2.5 = sigma², kernel exp(-d² / 5)
    expected = np.exp(-1 / 5) + np.exp(-9 / 5) - 2 * (1 + np.exp(-9 / 5) + np.exp(-1 / 5) + np.exp(-4 / 5)) / 4
    assert _mmd(x, y) == pytest.approx(expected, rel=1e-12)
    # x against itself: squared distances 1, 0, 1, 1, 0, 1 -> median 1, kernel exp(-d² / 2); the unbiased
    # estimate of a zero MMD² is negative here, as it can be for small samples
    expected = 2 * np.exp(-1 / 2) - 2 * (2 + 2 * np.exp(-1 / 2)) / 4
    assert _mmd(x, x.copy()) == pytest.approx(expected, rel=1e-12)


def test_de_overlap_counts_recovered_top_markers():
    rng = np.random.default_rng(0)
    n, genes = 30, 30
    labels = np.repeat(["A", "B", "C"], n)

    def cells(markers):
        X = rng.normal(1.0, 0.1, size=(3 * n, genes))
        for group, columns in markers.items():
            X[np.ix_(labels == group, columns)] += 3.0
        return _anndata(X, labels)

    real = cells({"A": [0, 1, 2, 3, 4], "B": [5, 6, 7, 8, 9], "C": [10, 11, 12, 13, 14]})
    generated = cells({"A": [0, 1, 2, 15, 16], "B": [5, 6, 7, 8, 9], "C": [20, 21, 22, 23, 24]})
    fast = LogisticRegression(max_iter=1000)  # the classifier plays no part here
    scores = bf.metrics.generation_scores(real, generated, groupby="cell_type", n_top_genes=5, classifier=fast)
    assert scores["de_overlap"].tolist() == [0.6, 1.0, 0.0]
    assert scores["pearson_mean"].loc["B"] > scores["pearson_mean"].loc["C"]
    # markers are ranked among the scored groups only: against C alone, A's markers are still 0-4 / 0-2, 15, 16
    pair = bf.metrics.generation_scores(
        real, generated, groupby="cell_type", groups=["A", "C"], n_top_genes=5, classifier=fast
    )
    assert pair.index.tolist() == ["A", "C"] and pair["de_overlap"].tolist() == [0.6, 0.0]
    single = bf.metrics.generation_scores(
        real, generated, groupby="cell_type", groups=["A"], n_top_genes=5, classifier=fast
    )
    assert np.isnan(single.loc["A", "de_overlap"])


def test_scores_are_seeded_and_alike_for_dense_sparse_and_gene_order(halves):
    real, generated = halves
    classifier = LogisticRegression(max_iter=1000)
    scores = bf.metrics.generation_scores(real, generated, classifier=classifier, seed=3)
    again = bf.metrics.generation_scores(real, generated, classifier=classifier, seed=3)
    pd.testing.assert_frame_equal(scores, again)

    dense = generated[:, generated.var_names[::-1]].copy()
    dense.X = dense.X.toarray()
    other = bf.metrics.generation_scores(real, dense, classifier=classifier, seed=3)
    exact = ["n_real", "n_generated", "pearson_mean", "r2_mean", "pearson_var", "mmd"]
    pd.testing.assert_frame_equal(other[exact], scores[exact], rtol=1e-5)
    np.testing.assert_allclose(other["c2st_auc"], scores["c2st_auc"], atol=0.05)
    real.X = real.X.toarray()  # dense real cells, sparse generated ones
    mixed = bf.metrics.generation_scores(real, generated, classifier=classifier, seed=3)
    pd.testing.assert_frame_equal(mixed[exact], scores[exact], rtol=1e-5)


def test_scores_read_a_layer_and_leave_both_anndata_unchanged(halves, deep_snapshot, assert_same_anndata):
    real, generated = halves
    for adata in (real, generated):
        adata.layers["log"] = adata.X.copy()
        adata.X = sparse.csr_matrix(adata.shape, dtype=np.float32)
    before_real, before_generated = deep_snapshot(real), deep_snapshot(generated)
    scores = bf.metrics.generation_scores(real, generated, groupby="cell_type", layer="log", n_top_genes=5)
    assert (scores["pearson_mean"] > 0.9).all()
    assert_same_anndata(before_real, real)
    assert_same_anndata(before_generated, generated)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda r, g: (r, g[:, :-1].copy()), ValueError, r"same genes.*missing from `generated`: 'gene_39'"),
        (lambda r, g: (r, _renamed(g)), ValueError, r"not in `real`: 'other'.*shared genes"),
        (lambda r, g: (r, _without_column(g)), KeyError, r"`groupby='cell_type'` is not a column of `generated.obs`"),
        (
            lambda r, g: (r, g[g.obs["cell_type"] != "type_2"].copy()),
            ValueError,
            r"no generated cells of 'type_2'.*groups=",
        ),
        (lambda r, g: (r, _with_nan(g)), ValueError, r"`generated.layers\['log'\]` contains NaN"),
        (
            lambda r, g: (r, _one_cell_of_type_2(g)),
            ValueError,
            r"at least 2 real and 2 generated.*'type_2' \(52 real, 1 generated\)",
        ),
    ],
)
def test_bad_input_is_refused_before_anything_changes(halves, change, error, match, deep_snapshot, assert_same_anndata):
    real, generated = halves
    for adata in (real, generated):
        adata.layers["log"] = adata.X.copy()
    real, generated = change(real, generated)
    before_real, before_generated = deep_snapshot(real), deep_snapshot(generated)
    with pytest.raises(error, match=match):
        bf.metrics.generation_scores(real, generated, groupby="cell_type", layer="log")
    assert_same_anndata(before_real, real)
    assert_same_anndata(before_generated, generated)


def _renamed(adata):
    adata = adata.copy()
    adata.var_names = [*adata.var_names[:-1], "other"]
    return adata


def _without_column(adata):
    adata = adata.copy()
    adata.obs = adata.obs.rename(columns={"cell_type": "celltype"})
    return adata


def _one_cell_of_type_2(adata):
    is_type_2 = (adata.obs["cell_type"] == "type_2").to_numpy()
    return adata[~is_type_2 | (np.cumsum(is_type_2) == 1)].copy()


def _with_nan(adata):
    adata = adata.copy()
    adata.layers["log"] = adata.layers["log"].toarray()
    adata.layers["log"][0, 0] = np.nan
    return adata


def test_bad_options_are_refused(halves):
    real, generated = halves
    with pytest.raises(ValueError, match=r"no real cells of 'type_9'|'type_9' has no real"):
        bf.metrics.generation_scores(real, generated, groupby="cell_type", groups=["type_0", "type_9"])
    with pytest.raises(ValueError, match=r"`groups=` needs `groupby=`"):
        bf.metrics.generation_scores(real, generated, groups=["type_0"])
    with pytest.raises(ValueError, match=r"`n_top_genes=0` must be an integer >= 1"):
        bf.metrics.generation_scores(real, generated, n_top_genes=0)
    with pytest.raises(TypeError, match=r"predict_proba"):
        bf.metrics.generation_scores(real, generated, classifier=object())
    with pytest.raises(TypeError, match=r"`generated` must be an AnnData"):
        bf.metrics.generation_scores(real, generated.to_df())


# --- baselines -----------------------------------------------------------------------------------


def test_baselines_have_the_requested_cells_and_are_seeded(halves):
    train, _ = halves
    assert train.obs["cell_type"].value_counts().to_dict() == {"type_0": 67, "type_1": 61, "type_2": 52}
    n_per_group = {"type_0": 7, "type_1": 0, "type_2": 150}
    baselines = bf.metrics.generation_baselines(train, groupby="cell_type", n_per_group=n_per_group, seed=1)
    assert list(baselines) == ["resample", "independent_genes", "mean_noise"]
    for method, cells in baselines.items():
        n_type_2 = 52 if method == "resample" else 150  # resampling stops at the group's training cells
        assert cells.shape == (7 + n_type_2, train.n_vars)
        assert cells.var_names.equals(train.var_names)
        assert cells.obs_names[0] == f"{method}_0" and cells.obs_names.is_unique
        assert cells.obs["cell_type"].cat.categories.tolist() == ["type_0", "type_2"]
        assert cells.obs["cell_type"].value_counts().to_dict() == {"type_0": 7, "type_2": n_type_2}
        assert sparse.issparse(cells.X) and cells.X.dtype == np.float32
        assert cells.X.min() >= 0
    again = bf.metrics.generation_baselines(train, groupby="cell_type", n_per_group=n_per_group, seed=1)
    other = bf.metrics.generation_baselines(train, groupby="cell_type", n_per_group=n_per_group, seed=2)
    alone = bf.metrics.generation_baselines(
        train, groupby="cell_type", n_per_group=n_per_group, methods="mean_noise", seed=1
    )
    for method, cells in baselines.items():
        np.testing.assert_array_equal(again[method].X.toarray(), cells.X.toarray())
        assert not np.array_equal(other[method].X.toarray(), cells.X.toarray())
    np.testing.assert_array_equal(alone["mean_noise"].X.toarray(), baselines["mean_noise"].X.toarray())


def test_resample_draws_distinct_training_cells_of_the_group(halves):
    train, _ = halves
    baselines = bf.metrics.generation_baselines(train, groupby="cell_type", methods=["resample"], n_per_group=60)
    cells = baselines["resample"]
    assert cells.obs["cell_type"].value_counts().to_dict() == {"type_0": 60, "type_1": 60, "type_2": 52}
    rows = {tuple(row): label for row, label in zip(train.X.toarray(), train.obs["cell_type"], strict=True)}
    drawn = [tuple(row) for row in cells.X.toarray()]
    assert len(rows) == train.n_obs and len(set(drawn)) == len(drawn)  # no cell twice
    assert [rows[row] for row in drawn] == cells.obs["cell_type"].tolist()  # each a training cell of its group


def test_independent_genes_keep_marginals_and_lose_a_planted_correlation():
    rng = np.random.default_rng(0)
    shared = rng.gamma(2.0, 1.0, size=400)
    X = np.column_stack([shared, np.abs(shared + rng.normal(0, 0.1, 400)), rng.gamma(1.0, 2.0, 400), np.zeros(400)])
    X[rng.random(400) < 0.3, 2] = 0.0
    train = _anndata(X)
    baselines = bf.metrics.generation_baselines(train, n_per_group=4000, seed=0)
    assert not sparse.issparse(baselines["resample"].X) and "cell_type" not in baselines["resample"].obs

    independent = baselines["independent_genes"].X
    np.testing.assert_allclose(independent.mean(axis=0), X.mean(axis=0), rtol=0.05, atol=1e-12)
    np.testing.assert_allclose(independent.std(axis=0), X.std(axis=0), rtol=0.05, atol=1e-12)
    assert np.isin(independent[:, 2], X[:, 2]).all()  # every value is a training value of the gene
    assert np.corrcoef(X[:, 0], X[:, 1])[0, 1] > 0.99
    assert abs(np.corrcoef(independent[:, 0], independent[:, 1])[0, 1]) < 0.05
    assert np.corrcoef(baselines["resample"].X[:, 0], baselines["resample"].X[:, 1])[0, 1] > 0.99

    noise = baselines["mean_noise"].X
    assert noise.min() >= 0 and (noise[:, 3] == 0).all()
    assert abs(np.corrcoef(noise[:, 0], noise[:, 1])[0, 1]) < 0.05
    np.testing.assert_allclose(noise[:, :2].mean(axis=0), X[:, :2].mean(axis=0), rtol=0.05)

    # far from 0 nothing is clipped: the mean and the standard deviation are kept
    far = bf.metrics.generation_baselines(_anndata(X + 20), n_per_group=4000, methods="mean_noise")["mean_noise"].X
    np.testing.assert_allclose(far.mean(axis=0), X.mean(axis=0) + 20, rtol=0.01)
    np.testing.assert_allclose(far.std(axis=0), X.std(axis=0), rtol=0.05)
    # negative values (e.g. scaled data) are not clipped
    centred = bf.metrics.generation_baselines(_anndata(X - X.mean(axis=0)), n_per_group=500, methods="mean_noise")
    assert centred["mean_noise"].X.min() < 0


def test_baselines_from_a_layer_score_with_that_layer_and_survive_h5ad(halves, tmp_path):
    train, test = halves
    train.layers["log"] = train.X.copy()
    test.layers["log"] = test.X.copy()
    train.X = sparse.csr_matrix(train.shape, dtype=np.float32)
    baselines = bf.metrics.generation_baselines(
        train, groupby="cell_type", methods=["resample", "mean_noise"], layer="log"
    )
    forest = RandomForestClassifier(n_estimators=30, random_state=0)  # smaller than the default, for speed
    scores = {
        method: bf.metrics.generation_scores(test, cells, groupby="cell_type", layer="log", classifier=forest)
        for method, cells in baselines.items()
    }
    assert (scores["resample"]["pearson_mean"] > 0.9).all()
    # the noise of every gene's own spread blurs the picture enough for the classifier
    assert scores["mean_noise"]["c2st_auc"].mean() > scores["resample"]["c2st_auc"].mean() + 0.1
    path = tmp_path / "resample.h5ad"
    baselines["resample"].write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.layers["log"].toarray(), baselines["resample"].X.toarray())
    pd.testing.assert_frame_equal(back.obs, baselines["resample"].obs)


def test_bad_baseline_options_are_refused(halves, deep_snapshot, assert_same_anndata):
    train, _ = halves
    before = deep_snapshot(train)
    with pytest.raises(ValueError, match=r"Unknown baseline\(s\) 'copy'"):
        bf.metrics.generation_baselines(train, methods=["resample", "copy"])
    with pytest.raises(ValueError, match=r"'type_7', which have no training cells"):
        bf.metrics.generation_baselines(train, groupby="cell_type", n_per_group={"type_0": 3, "type_7": 2})
    with pytest.raises(ValueError, match=r"mapping needs `groupby=`"):
        bf.metrics.generation_baselines(train, n_per_group={"type_0": 3})
    with pytest.raises(ValueError, match=r"`n_per_group=0` must be an integer >= 1"):
        bf.metrics.generation_baselines(train, n_per_group=0)
    with pytest.raises(KeyError, match=r"Did you mean 'cell_type'"):
        bf.metrics.generation_baselines(train, groupby="celltype")
    with pytest.raises(KeyError, match=r"Layer 'log' not found in `train.layers`"):
        bf.metrics.generation_baselines(train, layer="log")
    assert_same_anndata(before, train)
