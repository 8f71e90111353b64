"""Rank tokens (``bf.pp.rank``, ``binning="rank"``): Geneformer's ranking written as value tokens."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import bioformers as bf
from bioformers.data import binned_batches
from bioformers.pp._rank import rank_matrix
from bioformers.pp._tokens import bin_matrix

KEY = "bioformers_binned"

# Every cell totals 10, so with target_sum=10 the scaled values are the counts themselves.
# Non-zero medians: A = median(6, 8, 2, 10) = 7, B = median(3, 1, 4) = 3, C = median(1, 1, 4) = 1,
# Z is never expressed -> 1. Counts / medians, ranked (ties by gene position):
#   c0: A 6/7, B 3/3, C 1/1  -> B (ties C, comes first), C, A
#   c1: A 8/7, B 1/3, C 1/1  -> A, C, B   (raw counts: A, B, C)
#   c2: A 2/7, B 4/3, C 4/1  -> C, B, A   (raw counts: B, C, A)
#   c3: A                    -> A
COUNTS = np.array([[6, 3, 1, 0], [8, 1, 1, 0], [2, 4, 4, 0], [10, 0, 0, 0]], dtype=np.float64)
GENES = ["A", "B", "C", "Z"]
MEDIANS = [7.0, 3.0, 1.0, 1.0]
# token = max(n_ranks + 1 - rank, 1)
TOKENS_3 = [[1, 3, 2, 0], [3, 1, 2, 0], [1, 2, 3, 0], [3, 0, 0, 0]]
TOKENS_2 = [[1, 2, 1, 0], [2, 1, 1, 0], [1, 1, 2, 0], [2, 0, 0, 0]]
TOKENS_5 = [[3, 5, 4, 0], [5, 3, 4, 0], [3, 4, 5, 0], [5, 0, 0, 0]]


def _adata(X=COUNTS, genes=GENES) -> ad.AnnData:
    return ad.AnnData(
        X=sparse.csr_matrix(np.asarray(X, dtype=np.float64)),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(len(X))]),
        var=pd.DataFrame(index=genes),
    )


def _tokens(adata, key=KEY) -> np.ndarray:
    return adata.layers[key].toarray()


# --- hand-computed ranks ------------------------------------------------------------------------


@pytest.mark.parametrize(("n_ranks", "expected"), [(3, TOKENS_3), (2, TOKENS_2), (5, TOKENS_5)])
def test_hand_computed_tokens(n_ranks, expected):
    adata = _adata()
    bf.pp.rank(adata, n_ranks=n_ranks, target_sum=10)
    np.testing.assert_array_equal(_tokens(adata), expected)
    record = adata.uns[KEY]
    assert record["n_tokens"] == n_ranks + 1
    assert record["params"]["method"] == "rank"
    assert record["params"]["n_ranks"] == n_ranks
    np.testing.assert_array_equal(record["params"]["gene_medians"], MEDIANS)


def test_median_normalisation_changes_the_order_of_raw_counts():
    # with every median 1 the ranking is Geneformer's without its gene normalisation: by count
    adata = _adata()
    bf.pp.rank(adata, n_ranks=3, gene_medians=np.ones(4))
    np.testing.assert_array_equal(_tokens(adata), [[3, 2, 1, 0], [3, 2, 1, 0], [1, 3, 2, 0], [3, 0, 0, 0]])
    assert not np.array_equal(_tokens(adata), TOKENS_3)


def test_target_sum_sets_the_medians_scale_not_the_ranks():
    adata = _adata()
    bf.pp.rank(adata, n_ranks=3)  # default 1e4: every count x 1,000
    np.testing.assert_array_equal(_tokens(adata), TOKENS_3)
    np.testing.assert_allclose(adata.uns[KEY]["params"]["gene_medians"], [7000, 3000, 1000, 1])
    assert adata.uns[KEY]["params"]["target_sum"] == 1e4


def test_ties_broken_by_gene_position():
    # equal counts, equal medians: earlier genes rank higher, in every repetition
    adata = _adata([[2, 2, 2, 2]], genes=list("wxyz"))
    bf.pp.rank(adata, n_ranks=10, gene_medians=np.ones(4))
    np.testing.assert_array_equal(_tokens(adata), [[10, 9, 8, 7]])


def test_ranks_are_unchanged_by_scaling_a_cell():
    scaled = COUNTS * np.array([[3.0], [1.0], [0.5], [7.0]])
    ref, other = _adata(), _adata(scaled)
    bf.pp.rank(ref, n_ranks=3)
    bf.pp.rank(other, n_ranks=3)  # non-integer values are fine: already normalised counts rank the same
    np.testing.assert_array_equal(_tokens(other), _tokens(ref))
    np.testing.assert_allclose(other.uns[KEY]["params"]["gene_medians"], ref.uns[KEY]["params"]["gene_medians"])


def test_medians_are_nonzero_medians_of_normalised_counts():
    adata = bf.datasets.synthetic(n_obs=120, n_vars=30, seed=3)
    X = adata.X.toarray().astype(np.float64)
    X[:, 5] = 0  # a gene expressed nowhere
    adata.X = sparse.csr_matrix(X)
    bf.pp.rank(adata)
    normalised = X * 1e4 / X.sum(axis=1, keepdims=True)
    expected = [np.median(col[col > 0]) if (col > 0).any() else 1.0 for col in normalised.T]
    np.testing.assert_allclose(adata.uns[KEY]["params"]["gene_medians"], expected, rtol=1e-12)
    assert adata.uns[KEY]["params"]["gene_medians"][5] == 1.0


def test_every_cell_ranked_consistently_with_numpy():
    adata = bf.datasets.synthetic(n_obs=80, n_vars=30, seed=4)
    bf.pp.rank(adata, n_ranks=8)
    X = adata.X.toarray().astype(np.float64)
    medians = adata.uns[KEY]["params"]["gene_medians"]
    relative = X * 1e4 / X.sum(axis=1, keepdims=True) / medians
    tokens = _tokens(adata)
    for cell in range(adata.n_obs):
        expressed = np.flatnonzero(X[cell])
        order = expressed[np.lexsort((expressed, -relative[cell, expressed]))]
        expected = np.zeros(adata.n_vars, dtype=int)
        expected[order] = np.maximum(8 - np.arange(order.size), 1)
        np.testing.assert_array_equal(tokens[cell], expected)


# --- representation -------------------------------------------------------------------------------


def test_sparsity_dtype_and_layout():
    adata = bf.datasets.synthetic(n_obs=100, n_vars=30)
    bf.pp.rank(adata, n_ranks=12)
    tokens = adata.layers[KEY]
    assert sparse.isspmatrix_csr(tokens) and tokens.dtype == np.int16
    np.testing.assert_array_equal(tokens.toarray() > 0, adata.X.toarray() > 0)
    assert tokens.nnz == sparse.csr_matrix(adata.X).nnz
    assert tokens.max() == 12 and tokens.data.min() >= 1
    # every cell's top gene gets n_ranks
    np.testing.assert_array_equal(tokens.toarray().max(axis=1), 12)


def test_csr_csc_dense_identical():
    base = bf.datasets.synthetic(n_obs=100, n_vars=30)
    results = []
    for convert in (sparse.csr_matrix, sparse.csc_matrix, lambda m: m.toarray()):
        adata = base.copy()
        adata.X = convert(sparse.csr_matrix(adata.X))
        bf.pp.rank(adata, n_ranks=10)
        results.append(adata)
    for other in results[1:]:
        np.testing.assert_array_equal(_tokens(other), _tokens(results[0]))
        np.testing.assert_array_equal(
            other.uns[KEY]["params"]["gene_medians"], results[0].uns[KEY]["params"]["gene_medians"]
        )


def test_chunked_equals_whole():
    adata = bf.datasets.synthetic(n_obs=150, n_vars=30)
    bf.pp.rank(adata, n_ranks=10)
    params = adata.uns[KEY]["params"]
    chunks = [
        rank_matrix(adata.X[start : start + 37], n_ranks=10, gene_medians=params["gene_medians"])[0]
        for start in range(0, adata.n_obs, 37)
    ]
    np.testing.assert_array_equal(sparse.vstack(chunks).toarray(), _tokens(adata))
    # bin_matrix, which the streaming and query code call with the record, dispatches to the same
    recorded = {k: params[k] for k in ("method", "n_ranks", "target_sum", "gene_medians")}
    streamed = sparse.vstack([bin_matrix(adata.X[s : s + 50], **recorded)[0] for s in range(0, 150, 50)])
    np.testing.assert_array_equal(streamed.toarray(), _tokens(adata))


def test_query_ranked_on_reference_medians():
    ref = _adata()
    bf.pp.rank(ref, n_ranks=3, target_sum=10)
    # one query cell, expressing Z (divided by its median 1): C 2/1 = Z 2/1 > B 5/3 > A 1/7
    query = _adata([[1, 5, 2, 2]])
    medians = ref.uns[KEY]["params"]["gene_medians"]
    bf.pp.rank(query, n_ranks=3, target_sum=10, gene_medians=medians)
    np.testing.assert_array_equal(_tokens(query), [[1, 1, 3, 2]])
    np.testing.assert_array_equal(query.uns[KEY]["params"]["gene_medians"], medians)
    assert query.uns[KEY]["params"]["gene_medians"] is not medians  # its own copy, not the reference's array
    # by name: a Series or dict in another order, with extra genes, gives the same
    by_name = pd.Series(medians, index=GENES).iloc[::-1]
    for given in (by_name, {**by_name.to_dict(), "extra": 5.0}):
        again = _adata([[1, 5, 2, 2]])
        bf.pp.rank(again, n_ranks=3, target_sum=10, gene_medians=given)
        np.testing.assert_array_equal(_tokens(again), _tokens(query))
    # its own medians would rank it differently
    own = _adata([[1, 5, 2, 2]])
    bf.pp.rank(own, n_ranks=3, target_sum=10)
    np.testing.assert_array_equal(_tokens(own), [[3, 2, 1, 1]])


def test_params_survive_h5ad(tmp_path):
    adata = bf.datasets.synthetic(n_obs=60, n_vars=20)
    bf.pp.rank(adata, n_ranks=7, key_added="geneformer")
    adata.write_h5ad(tmp_path / "ranked.h5ad")
    back = ad.read_h5ad(tmp_path / "ranked.h5ad")
    np.testing.assert_array_equal(back.layers["geneformer_binned"].toarray(), _tokens(adata, "geneformer_binned"))
    params = back.uns["geneformer_binned"]["params"]
    assert params["method"] == "rank" and params["n_ranks"] == 7 and back.uns["geneformer_binned"]["n_tokens"] == 8
    np.testing.assert_array_equal(params["gene_medians"], adata.uns["geneformer_binned"]["params"]["gene_medians"])
    # re-ranking with the record read back gives the same tokens
    again = bf.datasets.synthetic(n_obs=60, n_vars=20)
    bf.pp.rank(again, n_ranks=params["n_ranks"], target_sum=params["target_sum"], gene_medians=params["gene_medians"])
    np.testing.assert_array_equal(_tokens(again), _tokens(adata, "geneformer_binned"))


def test_copy_and_view(deep_snapshot, assert_same_anndata):
    adata = bf.datasets.synthetic(n_obs=60, n_vars=20)
    before = deep_snapshot(adata)
    ranked = bf.pp.rank(adata, n_ranks=5, copy=True)
    assert_same_anndata(before, adata)
    view = adata[:30]
    from_view = bf.pp.rank(view, n_ranks=5, copy=True)
    assert not from_view.is_view
    assert KEY in ranked.layers and KEY not in adata.layers
    np.testing.assert_array_equal(_tokens(from_view), rank_matrix(adata.X[:30], n_ranks=5)[0].toarray())


def test_layer_argument():
    adata = _adata()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sparse.csr_matrix(np.log1p(adata.X.toarray()))
    bf.pp.rank(adata, n_ranks=3, target_sum=10, layer="counts")
    np.testing.assert_array_equal(_tokens(adata), TOKENS_3)
    assert adata.uns[KEY]["params"]["layer"] == "counts"


# --- bad input ------------------------------------------------------------------------------------


def _negative():
    adata = _adata()
    adata.X = sparse.csr_matrix(COUNTS * np.where(np.arange(4) == 1, -1, 1))
    return adata


def _empty_cell():
    adata = _adata([[1, 0, 0, 0], [0, 0, 0, 0]])
    return adata


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (_negative, {}, ValueError, "negative"),
        (_empty_cell, {}, ValueError, "no counts"),
        (_adata, {"n_ranks": 0}, ValueError, "n_ranks"),
        (_adata, {"n_ranks": 2.5}, ValueError, "n_ranks"),
        (_adata, {"n_ranks": 40_000}, ValueError, "n_ranks"),
        (_adata, {"target_sum": 0}, ValueError, "target_sum"),
        (_adata, {"target_sum": float("nan")}, ValueError, "target_sum"),
        (_adata, {"gene_medians": np.ones(3)}, ValueError, "one median per gene"),
        (_adata, {"gene_medians": np.ones((4, 1))}, ValueError, "one median per gene"),
        (_adata, {"gene_medians": [1.0, 0.0, 2.0, 1.0]}, ValueError, "positive and finite"),
        (_adata, {"gene_medians": [1.0, -1.0, 2.0, 1.0]}, ValueError, "positive and finite"),
        (_adata, {"gene_medians": [1.0, np.nan, 2.0, 1.0]}, ValueError, "positive and finite"),
        (_adata, {"gene_medians": ["a", "b", "c", "d"]}, TypeError, "numbers"),
        (_adata, {"gene_medians": {"A": 1.0, "B": 2.0}}, KeyError, "no median for 2 gene"),
        (_adata, {"layer": "count"}, KeyError, "Layer 'count' not found"),
    ],
)
def test_bad_input_refused_unchanged(make, kwargs, error, match, deep_snapshot, assert_same_anndata):
    adata = make()
    before = deep_snapshot(adata)
    with pytest.raises(error, match=match):
        bf.pp.rank(adata, **kwargs)
    assert_same_anndata(before, adata)


def test_view_without_copy_refused(deep_snapshot, assert_same_anndata):
    adata = _adata()
    before = deep_snapshot(adata)
    with pytest.raises(ValueError, match="is a view"):
        bf.pp.rank(adata[:2])
    assert_same_anndata(before, adata)


def test_bin_points_to_rank():
    adata = _adata()
    with pytest.raises(ValueError, match=r"bf\.pp\.rank"):
        bf.pp.bin(adata, method="rank")
    assert KEY not in adata.layers


# --- models on rank tokens ------------------------------------------------------------------------

N_RANKS = 20


@pytest.fixture(scope="session")
def rank_pretrained(pretrain_kwargs):
    """``(model, adata)`` pretrained on rank tokens; copy ``adata`` before writing into it."""
    adata = bf.datasets.synthetic(n_obs=200, n_vars=40)
    model = bf.tl.pretrain(adata, binning="rank", n_bins=N_RANKS, **(pretrain_kwargs | {"max_epochs": 1}))
    return model, adata


@pytest.fixture
def query():
    return bf.datasets.synthetic(n_obs=70, n_vars=40, seed=1)


def _reference_ranked(model, query):
    params = model.binning_
    return bf.pp.rank(
        query,
        n_ranks=params["n_ranks"],
        target_sum=params["target_sum"],
        gene_medians=params["gene_medians"],
        copy=True,
    )


def test_pretrain_on_rank_tokens(rank_pretrained):
    model, adata = rank_pretrained
    record = adata.uns[KEY]
    assert record["params"]["method"] == "rank" and record["params"]["n_ranks"] == N_RANKS
    assert record["n_tokens"] == N_RANKS + 1 == model.module.n_bins
    np.testing.assert_array_equal(_tokens(adata), bf.pp.rank(adata, n_ranks=N_RANKS, copy=True).layers[KEY].toarray())
    assert model.binning_["method"] == "rank" and len(model.binning_["gene_medians"]) == adata.n_vars
    embedding = adata.obsm["X_bioformers"]
    assert embedding.shape == (adata.n_obs, 16) and np.isfinite(embedding).all()
    assert adata.uns["bioformers"]["params"]["binning"] == "rank"
    assert np.isfinite(adata.uns["bioformers"]["history"]["train_loss"]).all()


def test_embed_query_ranked_with_training_medians(rank_pretrained, query):
    model, _ = rank_pretrained
    expected = _reference_ranked(model, query)
    bf.tl.embed(query, model)
    # the in-memory query is ranked on the training data's medians, not its own
    np.testing.assert_array_equal(_tokens(query), _tokens(expected))
    own = bf.pp.rank(query, n_ranks=N_RANKS, copy=True)
    assert not np.array_equal(_tokens(own), _tokens(query))
    # embedding what was ranked by hand gives the same cells
    bf.tl.embed(expected, model)
    np.testing.assert_array_equal(query.obsm["X_bioformers"], expected.obsm["X_bioformers"])


def test_backed_and_reordered_query_ranked_like_in_memory(rank_pretrained, query, tmp_path):
    model, _ = rank_pretrained
    expected = _reference_ranked(model, query)
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    streamed = binned_batches(backed, binning=model.binning_, binned_layer=KEY, batch_size=16, chunk_size=32)
    np.testing.assert_array_equal(np.concatenate(list(streamed)), _tokens(expected))

    bf.tl.embed(backed, model, chunk_size=32)
    bf.tl.embed(query, model)
    np.testing.assert_array_equal(backed.obsm["X_bioformers"], query.obsm["X_bioformers"])
    # genes in another order: matched by name and ranked on the model's genes, ties in the model's order
    shuffled = query[:, np.random.default_rng(0).permutation(query.n_vars)].copy()
    del shuffled.layers[KEY]
    bf.tl.embed(shuffled, model)
    np.testing.assert_array_equal(shuffled.obsm["X_bioformers"], query.obsm["X_bioformers"])


def test_save_load_round_trip(rank_pretrained, query, tmp_path):
    model, adata = rank_pretrained
    model.save(str(tmp_path / "model"))
    loaded = bf.BioFormer.load(str(tmp_path / "model"), adata=adata.copy())
    assert loaded.binning_["method"] == "rank" and loaded.binning_["n_ranks"] == N_RANKS
    np.testing.assert_array_equal(loaded.binning_["gene_medians"], model.binning_["gene_medians"])
    first, second = query.copy(), query.copy()
    bf.tl.embed(first, model)
    bf.tl.embed(second, loaded)
    np.testing.assert_array_equal(_tokens(second), _tokens(first))
    np.testing.assert_allclose(second.obsm["X_bioformers"], first.obsm["X_bioformers"], rtol=1e-5, atol=1e-6)


def test_predict_and_plot_rank_model(rank_pretrained, query):
    model, _ = rank_pretrained
    bf.tl.predict(query, model)
    # rank tokens have no count scale: predictions stay in token units
    assert query.uns["bioformers_predicted"]["params"]["scale"] == "bins"
    predicted = query.layers["bioformers_predicted"]
    assert np.nanmax(predicted) <= N_RANKS and np.nanmin(predicted) >= 0
    ax = bf.pl.binning(query, show=False)
    assert "rank tokens" in ax.get_title()
    assert len(ax.patches) == N_RANKS + 1


def test_decoder_on_rank_tokens(pretrain_kwargs, query):
    # the decoder reads a cell's genes by descending token: Geneformer's rank order
    adata = bf.datasets.synthetic(n_obs=200, n_vars=40)
    kwargs = pretrain_kwargs | {"max_epochs": 1, "architecture": "decoder"}
    model = bf.tl.pretrain(adata, binning="rank", n_bins=N_RANKS, **kwargs)
    assert model.binning_["method"] == "rank" and model.module.n_bins == N_RANKS + 1
    expected = _reference_ranked(model, query)
    bf.tl.embed(query, model)
    np.testing.assert_array_equal(_tokens(query), _tokens(expected))
    assert query.obsm["X_bioformers"].shape == (query.n_obs, 16) and np.isfinite(query.obsm["X_bioformers"]).all()
