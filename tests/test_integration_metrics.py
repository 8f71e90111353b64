import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import bioformers as bf


def _adata(rep: np.ndarray, *, batch, cell_type) -> ad.AnnData:
    """An AnnData holding only an embedding in obsm['X_rep'] and obs 'batch' / 'cell_type'."""
    obs = pd.DataFrame(
        {"batch": pd.Categorical(np.asarray(batch)), "cell_type": pd.Categorical(np.asarray(cell_type))},
        index=[f"c{i}" for i in range(len(rep))],
    )
    adata = ad.AnnData(X=np.ones((len(rep), 3), dtype=np.float32), obs=obs)
    adata.obsm["X_rep"] = np.asarray(rep, dtype=np.float64)
    return adata


def _planted(*, batch_shift: float, n_per: int = 60, seed: int = 0) -> ad.AnnData:
    """Three cell types as blobs 10 apart; batch 1 is moved by `batch_shift` along a direction of its own."""
    rng = np.random.default_rng(seed)
    centres = 10 * np.eye(3, 4)  # types along the first three axes; the batch effect along the fourth
    cell_type = np.repeat([0, 1, 2], 2 * n_per)
    batch = np.tile(np.repeat([0, 1], n_per), 3)
    rep = centres[cell_type] + rng.normal(size=(len(cell_type), 4))
    rep[:, 3] += batch_shift * batch
    return _adata(rep, batch=[f"b{b}" for b in batch], cell_type=[f"t{t}" for t in cell_type])


def _twins(n: int = 20, *, seed: int = 0) -> ad.AnnData:
    """Two types; each cell of batch b0 has a twin in b1 at exactly the same place."""
    rng = np.random.default_rng(seed)
    half = np.concatenate([rng.normal(size=(n, 3)), 50 + rng.normal(size=(n, 3))])
    types = np.repeat(["t0", "t1"], n)
    return _adata(np.concatenate([half, half]), batch=np.repeat(["b0", "b1"], 2 * n), cell_type=np.tile(types, 2))


def _reference_lisi(rep: np.ndarray, codes: np.ndarray, perplexity: int) -> np.ndarray:
    """LISI written out as in Korsunsky et al.'s compute_simpson_index: an independent check."""
    lisi = np.empty(len(rep))
    for i in range(len(rep)):
        d = np.linalg.norm(rep - rep[i], axis=1)
        d[i] = np.inf
        nearest = np.argsort(d)[: 3 * perplexity - 1]
        dist, beta, lo, hi = d[nearest], 1.0, -np.inf, np.inf
        for _ in range(100):
            p = np.exp(-dist * beta)
            h = np.log(p.sum()) + beta * (dist * p).sum() / p.sum()
            p /= p.sum()
            if abs(h - np.log(perplexity)) < 1e-5:
                break
            if h > np.log(perplexity):
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, beta / 2 if lo == -np.inf else (beta + lo) / 2
        lisi[i] = 1 / sum(p[codes[nearest] == b].sum() ** 2 for b in np.unique(codes))
    return lisi


# batch ASW


def test_batch_asw_is_zero_when_batches_separate_perfectly():
    # Within each type, all cells of a batch sit on one point: silhouette 1, so 1 - |s| = 0.
    rep = np.repeat([[0.0, 0], [0, 1], [50, 0], [50, 1]], 10, axis=0)
    adata = _adata(rep, batch=np.tile(np.repeat(["b0", "b1"], 10), 2), cell_type=np.repeat(["t0", "t1"], 20))
    assert bf.metrics.batch_asw(adata, use_rep="X_rep", batch_key="batch", label_key="cell_type") == 0.0


def test_batch_asw_of_twin_batches_is_hand_computed():
    # a(i) = S/(n-1) over the own batch, b(i) = S/n (the twin adds distance 0): s = -1/n, score 1 - 1/n.
    adata = _twins(n=20)
    score = bf.metrics.batch_asw(adata, use_rep="X_rep", batch_key="batch", label_key="cell_type")
    assert score == pytest.approx(1 - 1 / 20, abs=1e-7)  # sklearn distances are exact to ~1e-8


def test_batch_asw_skips_types_seen_in_one_batch():
    adata = _twins(n=20)
    extra = _adata(np.full((5, 3), 200.0), batch=["b0"] * 5, cell_type=["t2"] * 5)
    extra.obs_names = [f"extra{i}" for i in range(5)]
    both = ad.concat([adata, extra])
    score = bf.metrics.batch_asw(both, use_rep="X_rep", batch_key="batch", label_key="cell_type")
    assert score == pytest.approx(1 - 1 / 20, abs=1e-7)  # sklearn distances are exact to ~1e-8


def test_batch_asw_same_for_sparse_embedding():
    adata = _planted(batch_shift=2.0)
    dense = bf.metrics.batch_asw(adata, use_rep="X_rep", batch_key="batch", label_key="cell_type")
    adata.obsm["X_rep"] = sparse.csr_matrix(adata.obsm["X_rep"])
    assert bf.metrics.batch_asw(adata, use_rep="X_rep", batch_key="batch", label_key="cell_type") == pytest.approx(
        dense, abs=1e-12
    )


# graph connectivity


def test_graph_connectivity_is_one_for_connected_types():
    adata = _planted(batch_shift=0.0)
    assert bf.metrics.graph_connectivity(adata, use_rep="X_rep", label_key="cell_type") == 1.0


def test_graph_connectivity_of_a_split_type_is_its_largest_piece():
    # t0: an island of 30 cells far away and 10 cells next to t1's 40; restricted to t0, the
    # neighbour graph has pieces of 30 and 10 cells: (30/40 + 1) / 2.
    rng = np.random.default_rng(0)
    rep = np.concatenate(
        [
            0.1 * rng.normal(size=(30, 2)),
            [100, 5] + 0.1 * rng.normal(size=(10, 2)),
            [100, 0] + 0.1 * rng.normal(size=(40, 2)),
        ]
    )
    adata = _adata(rep, batch=["b0"] * 80, cell_type=["t0"] * 40 + ["t1"] * 40)
    assert bf.metrics.graph_connectivity(adata, use_rep="X_rep", label_key="cell_type") == pytest.approx(0.875)


# iLISI


def test_ilisi_is_zero_when_batches_separate_perfectly():
    rng = np.random.default_rng(0)
    rep = np.concatenate([rng.normal(size=(100, 3)), 100 + rng.normal(size=(100, 3))])
    adata = _adata(rep, batch=np.repeat(["b0", "b1"], 100), cell_type=np.tile(["t0", "t1"], 100))
    assert bf.metrics.ilisi(adata, use_rep="X_rep", batch_key="batch") == 0.0
    assert bf.metrics.ilisi(adata, use_rep="X_rep", batch_key="batch", scale=False) == 1.0


def test_ilisi_is_near_one_when_batches_mix():
    rng = np.random.default_rng(0)
    adata = _adata(rng.normal(size=(300, 3)), batch=np.tile(["b0", "b1", "b2"], 100), cell_type=["t0"] * 300)
    assert bf.metrics.ilisi(adata, use_rep="X_rep", batch_key="batch") > 0.85


@pytest.mark.parametrize("perplexity", [5, 30])
def test_ilisi_matches_the_lisi_formula(perplexity):
    rng = np.random.default_rng(1)
    rep = rng.normal(size=(150, 4))
    batch = rng.integers(0, 3, size=150)
    rep[:, 0] += 1.5 * batch  # partly mixed, so LISI is between 1 and 3
    adata = _adata(rep, batch=[f"b{b}" for b in batch], cell_type=["t0"] * 150)
    expected = np.median(_reference_lisi(rep, batch, perplexity))
    assert 1.2 < expected < 2.8
    raw = bf.metrics.ilisi(adata, use_rep="X_rep", batch_key="batch", perplexity=perplexity, scale=False)
    assert raw == pytest.approx(expected, abs=1e-4)
    scaled = bf.metrics.ilisi(adata, use_rep="X_rep", batch_key="batch", perplexity=perplexity)
    assert scaled == pytest.approx((raw - 1) / 2)


# all scores


def test_integration_scores_rank_a_planted_batch_effect():
    mixed = bf.metrics.integration_scores(
        _planted(batch_shift=0.0), use_rep="X_rep", batch_key="batch", label_key="cell_type"
    )
    shifted = bf.metrics.integration_scores(
        _planted(batch_shift=8.0), use_rep="X_rep", batch_key="batch", label_key="cell_type"
    )
    assert mixed["batch_asw"] > 0.9 and mixed["ilisi"] > 0.8 and mixed["graph_connectivity"] == 1.0
    assert shifted["batch_asw"] < 0.5 and shifted["ilisi"] < 0.05
    assert mixed["batch_correction"] > shifted["batch_correction"] + 0.4
    assert mixed["overall"] > shifted["overall"]
    # cell types stay apart in both: clusters recover them when batches are mixed
    assert mixed["nmi"] == pytest.approx(1.0) and mixed["ari"] == pytest.approx(1.0)
    for scores in (mixed, shifted):
        assert all(0 <= scores[k] <= 1 for k in scores if k != "resolution")


def test_integration_scores_aggregate_as_scib():
    adata = _planted(batch_shift=3.0)
    scores = bf.metrics.integration_scores(adata, use_rep="X_rep", batch_key="batch", label_key="cell_type")
    assert set(scores) == {
        "nmi",
        "ari",
        "asw_label",
        "batch_asw",
        "graph_connectivity",
        "ilisi",
        "bio_conservation",
        "batch_correction",
        "overall",
        "resolution",
    }
    bio = bf.metrics.avg_bio(adata, label_key="cell_type", use_rep="X_rep", cluster="leiden")
    assert (scores["nmi"], scores["ari"], scores["asw_label"], scores["resolution"]) == (
        bio["nmi"],
        bio["ari"],
        bio["asw"],
        bio["resolution"],
    )
    assert scores["bio_conservation"] == pytest.approx(bio["avg_bio"])
    assert scores["batch_asw"] == bf.metrics.batch_asw(adata, use_rep="X_rep", batch_key="batch", label_key="cell_type")
    assert scores["graph_connectivity"] == bf.metrics.graph_connectivity(adata, use_rep="X_rep", label_key="cell_type")
    assert scores["ilisi"] == bf.metrics.ilisi(adata, use_rep="X_rep", batch_key="batch")
    batch = (scores["batch_asw"] + scores["graph_connectivity"] + scores["ilisi"]) / 3
    assert scores["batch_correction"] == pytest.approx(batch)
    assert scores["overall"] == pytest.approx(0.6 * scores["bio_conservation"] + 0.4 * batch)


def test_integration_scores_leave_adata_unchanged_and_read_views(deep_snapshot, assert_same_anndata):
    adata = _planted(batch_shift=3.0)
    before = deep_snapshot(adata)
    full = bf.metrics.integration_scores(adata, use_rep="X_rep", batch_key="batch", label_key="cell_type")
    assert_same_anndata(before, adata)
    view = adata[:]
    assert view.is_view
    assert bf.metrics.integration_scores(view, use_rep="X_rep", batch_key="batch", label_key="cell_type") == full


# bad input


def _single_batch(adata):
    adata.obs["batch"] = pd.Categorical(["b0"] * adata.n_obs)


def _confined(adata):
    adata.obs["batch"] = pd.Categorical(adata.obs["cell_type"].astype(str))


def _nan_rep(adata):
    adata.obsm["X_rep"][3, 0] = np.nan


def _missing_batch(adata):
    adata.obs.loc[adata.obs_names[0], "batch"] = np.nan


@pytest.mark.parametrize(
    ("spoil", "kwargs", "error", "match"),
    [
        (None, {"batch_key": "bach"}, KeyError, r"batch_key='bach'.*Did you mean 'batch'"),
        (None, {"label_key": "celltype"}, KeyError, r"label_key='celltype'.*Did you mean 'cell_type'"),
        (None, {"use_rep": "X_bioformers"}, KeyError, r"X_bioformers.*bf\.tl\.pretrain"),
        (_single_batch, {}, ValueError, r"1 distinct value.*at least 2 batches"),
        (_confined, {}, ValueError, r"No cell type .* two batches"),
        (_nan_rep, {}, ValueError, r"NaN or infinite"),
        (_missing_batch, {}, ValueError, r"missing value"),
        (None, {"perplexity": 200}, ValueError, r"perplexity=200.*Pass `perplexity=120` or less"),
        (None, {"n_neighbors": 500}, ValueError, r"n_neighbors=500.*less than the number of cells \(360\)"),
    ],
)
def test_bad_input_refused_unchanged(spoil, kwargs, error, match, deep_snapshot, assert_same_anndata):
    adata = _planted(batch_shift=1.0)
    if spoil is not None:
        spoil(adata)
    before = deep_snapshot(adata)
    with pytest.raises(error, match=match):
        bf.metrics.integration_scores(
            adata, **{"use_rep": "X_rep", "batch_key": "batch", "label_key": "cell_type"} | kwargs
        )
    assert_same_anndata(before, adata)


def test_single_metrics_check_their_keys():
    adata = _planted(batch_shift=1.0)
    with pytest.raises(KeyError, match="label_key='type'"):
        bf.metrics.graph_connectivity(adata, use_rep="X_rep", label_key="type")
    with pytest.raises(KeyError, match="batch_key='b'"):
        bf.metrics.ilisi(adata, use_rep="X_rep", batch_key="b")
    with pytest.raises(ValueError, match=r"Pass `perplexity=120` or less"):
        bf.metrics.ilisi(adata, use_rep="X_rep", batch_key="batch", perplexity=121)
    _confined(adata)
    with pytest.raises(ValueError, match="No cell type"):
        bf.metrics.batch_asw(adata, use_rep="X_rep", batch_key="batch", label_key="cell_type")
