import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import silhouette_score

import bioformers as bf
from bioformers.metrics._bio import DEFAULT_RESOLUTIONS


def _blobs(*, n_per=60, n_types=3, dim=5, spread=0.1, seed=0) -> ad.AnnData:
    """Cell types as tight, far-apart blobs in obsm['X_rep']."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"t{i}" for i in range(n_types)], n_per)
    centres = 10 * rng.normal(size=(n_types, dim))
    rep = np.repeat(centres, n_per, axis=0) + spread * rng.normal(size=(n_types * n_per, dim))
    adata = ad.AnnData(
        X=rng.poisson(1, size=(len(labels), 4)).astype(np.float32),
        obs=pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))]),
    )
    adata.obsm["X_rep"] = rep
    return adata


@pytest.fixture
def blobs():
    return _blobs()


def test_separated_clusters_score_near_one(blobs):
    scores = bf.metrics.avg_bio(blobs, label_key="cell_type", use_rep="X_rep")
    assert set(scores) == {"nmi", "ari", "asw", "avg_bio"}
    assert scores["nmi"] == pytest.approx(1.0)
    assert scores["ari"] == pytest.approx(1.0)
    assert scores["asw"] > 0.9
    assert scores["avg_bio"] > 0.95
    assert scores["avg_bio"] == pytest.approx((scores["nmi"] + scores["ari"] + scores["asw"]) / 3)


def test_asw_is_rescaled_silhouette(blobs):
    blobs.obsm["X_rep"] = np.random.default_rng(1).normal(size=blobs.obsm["X_rep"].shape)
    scores = bf.metrics.avg_bio(blobs, label_key="cell_type", use_rep="X_rep")
    expected = (silhouette_score(blobs.obsm["X_rep"], blobs.obs["cell_type"]) + 1) / 2
    assert scores["asw"] == pytest.approx(expected)


def test_random_labels_score_low(blobs):
    rng = np.random.default_rng(0)
    blobs.obs["random"] = pd.Categorical(rng.permutation(blobs.obs["cell_type"].to_numpy()))
    scores = bf.metrics.avg_bio(blobs, label_key="random", use_rep="X_rep")
    assert scores["nmi"] < 0.1
    assert abs(scores["ari"]) < 0.05
    assert scores["asw"] < 0.55
    assert scores["avg_bio"] < 0.3


def test_kmeans_is_seeded(blobs):
    blobs.obsm["X_rep"] = np.random.default_rng(2).normal(size=blobs.obsm["X_rep"].shape)
    first = bf.metrics.avg_bio(blobs, label_key="cell_type", use_rep="X_rep", seed=5)
    assert bf.metrics.avg_bio(blobs, label_key="cell_type", use_rep="X_rep", seed=5) == first


def test_leiden_reports_the_best_resolution():
    # Overlapping blobs: the best resolution genuinely depends on the grid.
    adata = _blobs(n_per=40, n_types=4, spread=4.0, seed=3)
    scores = bf.metrics.avg_bio(adata, label_key="cell_type", use_rep="X_rep", cluster="leiden")
    assert scores["resolution"] in DEFAULT_RESOLUTIONS
    assert set(scores) == {"nmi", "ari", "asw", "avg_bio", "resolution"}
    singles = [
        bf.metrics.avg_bio(adata, label_key="cell_type", use_rep="X_rep", cluster="leiden", resolutions=[r])["nmi"]
        for r in (0.1, 1.0, 2.0)
    ]
    assert scores["nmi"] >= max(singles) - 1e-12
    assert scores["nmi"] > min(singles)  # the grid matters, so choosing must have happened


def test_leiden_on_separated_clusters(blobs):
    scores = bf.metrics.avg_bio(blobs, label_key="cell_type", use_rep="X_rep", cluster="leiden", resolutions=[0.5, 1.0])
    assert scores["resolution"] in (0.5, 1.0)
    assert scores["nmi"] > 0.95


@pytest.mark.parametrize("cluster", ["kmeans", "leiden"])
def test_adata_is_left_unchanged(blobs, cluster):
    before = blobs.copy()
    bf.metrics.avg_bio(blobs, label_key="cell_type", use_rep="X_rep", cluster=cluster, resolutions=[1.0])
    assert blobs.obs.equals(before.obs)
    assert list(blobs.obsm.keys()) == list(before.obsm.keys())
    np.testing.assert_array_equal(blobs.obsm["X_rep"], before.obsm["X_rep"])
    assert list(blobs.uns.keys()) == list(before.uns.keys()) == []
    assert list(blobs.obsp.keys()) == []
    np.testing.assert_array_equal(blobs.X, before.X)


def test_missing_label_key_raises(blobs):
    with pytest.raises(KeyError, match=r"label_key='nope'.*cell_type"):
        bf.metrics.avg_bio(blobs, label_key="nope", use_rep="X_rep")


def test_missing_rep_raises(blobs):
    with pytest.raises(KeyError, match=r"use_rep='X_bioformers'.*bf\.tl\.pretrain"):
        bf.metrics.avg_bio(blobs, label_key="cell_type", use_rep="X_bioformers")


def test_bad_input_raises(blobs):
    with pytest.raises(ValueError, match="cluster"):
        bf.metrics.avg_bio(blobs, label_key="cell_type", use_rep="X_rep", cluster="louvain")
    blobs.obs["one"] = pd.Categorical(["a"] * blobs.n_obs)
    with pytest.raises(ValueError, match="at least 2 labels"):
        bf.metrics.avg_bio(blobs, label_key="one", use_rep="X_rep")
    blobs.obs["holes"] = blobs.obs["cell_type"].cat.add_categories([]).copy()
    blobs.obs.loc[blobs.obs_names[0], "holes"] = np.nan
    with pytest.raises(ValueError, match="missing labels"):
        bf.metrics.avg_bio(blobs, label_key="holes", use_rep="X_rep")
