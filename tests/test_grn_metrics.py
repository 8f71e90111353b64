import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score

import bioformers as bf

# --- bundled TRRUST reference -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trrust():
    return bf.datasets.trrust()


def test_trrust_loads_all_rows_with_columns(trrust):
    assert list(trrust.columns) == ["source", "target", "mode", "pmids"]
    assert len(trrust) == 9396
    assert trrust["source"].nunique() == 795
    assert set(trrust["mode"].cat.categories) == {"Activation", "Repression", "Unknown"}
    assert (trrust["mode"] == "Activation").sum() == 3149
    # Gene symbols must stay strings (no NaN from symbols pandas would read as missing).
    assert trrust[["source", "target"]].map(lambda x: isinstance(x, str) and x != "").all().all()


def test_trrust_has_known_edges(trrust):
    # First line of the file: "AATF\tBAX\tRepression\t22909821".
    row = trrust.query("source == 'AATF' and target == 'BAX'")
    assert row[["mode", "pmids"]].values.tolist() == [["Repression", "22909821"]]
    assert "Activation" in set(trrust.query("source == 'TP53' and target == 'CDKN1A'")["mode"])


# --- grn_edges -----------------------------------------------------------------------------------

GENES = ["B", "A", "C"]  # not in name order, so name tie-breaking differs from matrix order
GRN = np.array(
    [
        [0.5, 0.2, 0.0],  # B -> B (self), B -> A
        [0.2, 0.0, np.nan],  # A -> B; A -> C is NaN, not an edge
        [0.7, 0.0, 0.2],  # C -> B; C -> C (self)
    ],
    dtype=np.float32,
)


def _as_tuples(edges):
    return [(s, t, round(float(w), 6)) for s, t, w in edges[["source", "target", "weight"]].itertuples(index=False)]


def test_grn_edges_sorted_without_self_loops_and_nan():
    edges = bf.metrics.grn_edges(GRN, GENES)
    assert list(edges.columns) == ["source", "target", "weight"]
    # 0.7 first; the two 0.2 edges are ordered by source name: A before B.
    assert _as_tuples(edges) == [("C", "B", 0.7), ("A", "B", 0.2), ("B", "A", 0.2)]
    assert edges["weight"].dtype == np.float32
    assert edges.index.equals(pd.RangeIndex(3))


def test_grn_edges_with_self_loops_top_and_min_weight():
    with_self = bf.metrics.grn_edges(GRN, GENES, exclude_self=False)
    assert _as_tuples(with_self) == [
        ("C", "B", 0.7),
        ("B", "B", 0.5),
        ("A", "B", 0.2),
        ("B", "A", 0.2),
        ("C", "C", 0.2),
    ]
    # top cuts through the 0.2 tie deterministically.
    assert _as_tuples(bf.metrics.grn_edges(GRN, GENES, top=2)) == [("C", "B", 0.7), ("A", "B", 0.2)]
    assert len(bf.metrics.grn_edges(GRN, GENES, top=0)) == 0
    assert len(bf.metrics.grn_edges(GRN, GENES, top=10)) == 3
    assert _as_tuples(bf.metrics.grn_edges(GRN, GENES, min_weight=0.5)) == [("C", "B", 0.7)]


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_grn_edges_sparse_equals_dense(fmt):
    rng = np.random.default_rng(0)
    dense = np.round(rng.random((60, 60)), 1) * (rng.random((60, 60)) < 0.3)  # rounding makes ties
    genes = [f"g{i}" for i in rng.permutation(60)]
    expected = bf.metrics.grn_edges(dense, genes)
    pd.testing.assert_frame_equal(bf.metrics.grn_edges(sparse.coo_matrix(dense).asformat(fmt), genes), expected)
    # Independent ordering: weight descending, then source and target name.
    by_pandas = expected.sort_values(["weight", "source", "target"], ascending=[False, True, True])
    pd.testing.assert_frame_equal(by_pandas.reset_index(drop=True), expected)
    assert len(expected) == np.count_nonzero(dense) - np.count_nonzero(np.diag(dense))
    pd.testing.assert_frame_equal(bf.metrics.grn_edges(dense, genes, top=25), expected.iloc[:25])


def test_grn_edges_sparse_explicit_zeros_and_nan_are_not_edges():
    # Stored entries: 0.0 (explicit zero), NaN, and two coo duplicates of B -> A that sum to 0.2.
    stored = sparse.coo_matrix(([0.0, np.nan, 0.1, 0.1, 0.7], ([0, 1, 0, 0, 2], [2, 2, 1, 1, 0])), shape=(3, 3))
    assert _as_tuples(bf.metrics.grn_edges(stored, GENES)) == [("C", "B", 0.7), ("B", "A", 0.2)]


def test_grn_edges_from_anndata_varp():
    adata = ad.AnnData(np.zeros((2, 3), dtype=np.float32), var=pd.DataFrame(index=GENES))
    adata.varp["bioformers_attention"] = GRN
    pd.testing.assert_frame_equal(bf.metrics.grn_edges(adata), bf.metrics.grn_edges(GRN, GENES))
    adata.varp["corr"] = sparse.csr_matrix(np.nan_to_num(GRN))
    assert _as_tuples(bf.metrics.grn_edges(adata, key="corr")) == _as_tuples(bf.metrics.grn_edges(GRN, GENES))


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("bioformers_attention", r"bf\.tl\.attention_grn"),
        ("bioformers_similarity", r"bf\.tl\.gene_programs"),
        ("pearson", r"correlation_grn"),
    ],
)
def test_grn_edges_missing_key_says_which_tool(key, hint):
    adata = ad.AnnData(np.zeros((2, 3), dtype=np.float32), var=pd.DataFrame(index=GENES))
    with pytest.raises(KeyError, match=hint):
        bf.metrics.grn_edges(adata, key=key)


def test_grn_edges_bad_input():
    adata = ad.AnnData(np.zeros((2, 3), dtype=np.float32), var=pd.DataFrame(index=GENES))
    adata.varp["bioformers_attention"] = GRN
    with pytest.raises(ValueError, match="only with a matrix"):
        bf.metrics.grn_edges(adata, GENES)
    with pytest.raises(ValueError, match="Pass `genes`"):
        bf.metrics.grn_edges(GRN)
    with pytest.raises(ValueError, match="3 rows and columns"):
        bf.metrics.grn_edges(GRN, ["A", "B"])
    with pytest.raises(ValueError, match="square"):
        bf.metrics.grn_edges(GRN[:2], ["A", "B"])
    with pytest.raises(ValueError, match=r"per head\? average them first"):
        bf.metrics.grn_edges(np.stack([GRN, GRN], axis=-1), GENES)
    with pytest.raises(ValueError, match="not unique"):
        bf.metrics.grn_edges(GRN, ["A", "A", "C"])


# --- score_grn -----------------------------------------------------------------------------------

# Genes T1, T2 (TFs of the reference), A, B, C. Reference edges among them: T1->A, T1->B, T2->T1.
# T1->A is listed twice (collapsed), X->A and T1->Z leave the gene set, T2->T2 is a self-loop.
SCORE_GENES = ["T1", "T2", "A", "B", "C"]
REFERENCE = pd.DataFrame(
    [
        ("T1", "A"),
        ("T1", "A"),
        ("T1", "B"),
        ("T2", "T1"),
        ("T2", "T2"),
        ("X", "A"),
        ("T1", "Z"),
    ],
    columns=["source", "target"],
)
PREDICTED = pd.DataFrame(
    [
        ("A", "T2", 0.95),  # source A is no TF: not a candidate (directed)
        ("T1", "A", 0.9),  # +
        ("B", "T1", 0.85),  # not a candidate (directed)
        ("T2", "C", 0.8),  # -
        ("A", "B", 0.7),  # not a candidate
        ("T2", "T1", 0.6),  # +
        ("T1", "C", 0.5),  # -
        ("T1", "B", 0.4),  # +
    ],
    columns=["source", "target", "weight"],
)


def test_score_grn_by_hand_directed():
    scores = bf.metrics.score_grn(PREDICTED, REFERENCE, genes=SCORE_GENES)
    # Candidates: 2 TFs x 4 other genes = 8; positives T1->A, T1->B, T2->T1: density 3/8.
    assert scores["n_candidates"] == 8
    assert scores["n_reference_edges"] == 3
    assert scores["n_tfs"] == 2
    assert scores["density"] == pytest.approx(3 / 8)
    # Ranked candidates: T1->A +, T2->C -, T2->T1 +, T1->C -, T1->B +, then T1->T2, T2->A, T2->B unlisted (-).
    # Top k=3 holds 2 positives: early precision 2/3, EPR (2/3) / (3/8) = 16/9.
    assert scores["early_precision"] == pytest.approx(2 / 3)
    assert scores["epr"] == pytest.approx(16 / 9)
    # Average precision: positives at ranks 1, 3, 5 -> (1/1 + 2/3 + 3/5) / 3 = 34/45.
    assert scores["auprc"] == pytest.approx(34 / 45)
    assert scores["auprc_ratio"] == pytest.approx((34 / 45) / (3 / 8))


def test_score_grn_by_hand_undirected():
    scores = bf.metrics.score_grn(PREDICTED, REFERENCE, genes=SCORE_GENES, directed=False)
    # Unordered pairs with at least one TF: C(5,2) - C(3,2) = 7; positives {T1,A}, {T1,B}, {T1,T2}.
    assert scores["n_candidates"] == 7
    assert scores["n_reference_edges"] == 3
    assert scores["density"] == pytest.approx(3 / 7)
    # Pair weight = max of both directions: {T2,A} 0.95 -, {T1,A} 0.9 +, {T1,B} 0.85 +, {T2,C} 0.8 -,
    # {T1,T2} 0.6 +, {T1,C} 0.5 -, {T2,B} unlisted -. Top 3: 2 positives -> EPR (2/3) / (3/7) = 14/9.
    assert scores["early_precision"] == pytest.approx(2 / 3)
    assert scores["epr"] == pytest.approx(14 / 9)
    # Positives at ranks 2, 3, 5: (1/2 + 2/3 + 3/5) / 3 = 53/90.
    assert scores["auprc"] == pytest.approx(53 / 90)


def test_score_grn_ties_at_cutoff_and_few_predictions():
    tied = PREDICTED.assign(weight=PREDICTED["weight"].where(PREDICTED["target"] != "C", 0.6))
    # T2->C and T1->C now 0.6, tied with T2->T1 at the 3rd place: all 4 edges >= 0.6 are taken (BEELINE),
    # 2 of them positive.
    assert bf.metrics.score_grn(tied, REFERENCE, genes=SCORE_GENES)["early_precision"] == pytest.approx(2 / 4)
    # Only one candidate predicted (fewer than k=3): precision over that one edge, 1/1; EPR 1 / (3/8).
    one = PREDICTED.query("source == 'T1' and target == 'A'")
    scores = bf.metrics.score_grn(one, REFERENCE, genes=SCORE_GENES)
    assert scores["early_precision"] == 1
    assert scores["epr"] == pytest.approx(8 / 3)
    # Zero weights are not predictions: with T2->C at 0, T1->A is the only predicted candidate.
    zero = pd.concat([one, pd.DataFrame({"source": ["T2"], "target": ["C"], "weight": [0.0]})])
    assert bf.metrics.score_grn(zero, REFERENCE, genes=SCORE_GENES)["early_precision"] == 1


def test_score_grn_genes_default_to_those_in_edges():
    # Without `genes` the universe is the genes in `edges`: the same five genes here.
    assert bf.metrics.score_grn(PREDICTED, REFERENCE) == bf.metrics.score_grn(PREDICTED, REFERENCE, genes=SCORE_GENES)


def _random_network(seed, *, n_genes=200, n_tfs=20, density=0.2):
    rng = np.random.default_rng(seed)
    genes = np.array([f"g{i}" for i in range(n_genes)])
    sources, targets = np.nonzero(rng.random((n_tfs, n_genes)) < density)
    reference = pd.DataFrame({"source": genes[sources], "target": genes[targets]})
    return rng, genes, reference


def _loop_scores(edges, reference, genes):
    """Candidates, labels and scores by plain Python loops, independent of score_grn."""
    weight = {(s, t): w for s, t, w in edges.itertuples(index=False)}
    ref = set(reference.itertuples(index=False, name=None))
    tfs = sorted(set(reference["source"]) & set(genes))
    pairs = [(tf, g) for tf in tfs for g in genes if g != tf]
    return np.array([p in ref for p in pairs]), np.array([weight.get(p, -1.0) for p in pairs])


def test_random_grn_scores_near_chance():
    rng, genes, reference = _random_network(0)
    edges = bf.metrics.grn_edges(rng.random((len(genes), len(genes))), genes)
    scores = bf.metrics.score_grn(edges, reference, genes=genes)
    assert scores["n_candidates"] == 20 * 199
    assert 0.7 < scores["epr"] < 1.3
    assert 0.8 < scores["auprc_ratio"] < 1.2
    y_true, y_score = _loop_scores(edges, reference, genes)
    assert scores["n_reference_edges"] == y_true.sum()
    assert scores["auprc"] == pytest.approx(average_precision_score(y_true, y_score))


def test_perfect_grn_reaches_one_over_density():
    rng, genes, reference = _random_network(1, density=0.05)
    index = pd.Index(genes)
    grn = np.zeros((len(genes), len(genes)))
    grn[index.get_indexer(reference["source"]), index.get_indexer(reference["target"])] = rng.random(len(reference))
    scores = bf.metrics.score_grn(bf.metrics.grn_edges(grn, genes), reference, genes=genes)
    assert scores["early_precision"] == 1
    assert scores["auprc"] == pytest.approx(1)
    assert scores["epr"] == pytest.approx(1 / scores["density"])
    # Reversing every edge makes the directed score chance-level or worse, but not the undirected one.
    flipped = bf.metrics.grn_edges(grn.T, genes)
    assert bf.metrics.score_grn(flipped, reference, genes=genes)["epr"] < 1
    assert bf.metrics.score_grn(flipped, reference, genes=genes, directed=False)["early_precision"] == 1


def test_score_grn_errors():
    with pytest.raises(ValueError, match="no edges with a nonzero weight"):
        bf.metrics.score_grn(PREDICTED.iloc[:0], REFERENCE, genes=SCORE_GENES)
    with pytest.raises(ValueError, match="no edges with a nonzero weight"):
        bf.metrics.score_grn(PREDICTED.assign(weight=0.0), REFERENCE, genes=SCORE_GENES)
    with pytest.raises(KeyError, match="weight"):
        bf.metrics.score_grn(PREDICTED.drop(columns="weight"), REFERENCE)
    with pytest.raises(ValueError, match=r"None of the reference's 3 TFs .* HGNC symbols"):
        bf.metrics.score_grn(PREDICTED, REFERENCE, genes=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"1 of its TFs are among the 3 genes \(T2\), but none of their reference"):
        bf.metrics.score_grn(PREDICTED, REFERENCE, genes=["T2", "B", "C"])


# --- correlation_grn ---------------------------------------------------------------------------


def _counts():
    rng = np.random.default_rng(0)
    X = rng.poisson(1.0, size=(40, 8)).astype(np.float32)
    X[:, 3] = 0  # never expressed
    X[:, 5] = 0.1  # constant; its sparse variance (sum x^2 - n mean^2) rounds to 5e-16, not 0
    X[:, 6] = 3 * X[:, 0] + 1  # perfectly correlated with gene 0
    return X


def _expected_correlation(X, rank=False):
    # corrcoef and spearmanr give NaN (with a warning) for constant genes.
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corr = np.nan_to_num(spearmanr(X).statistic if rank else np.corrcoef(X, rowvar=False))
    np.fill_diagonal(corr, 0)
    return corr


@pytest.mark.parametrize("to_matrix", [np.asarray, sparse.csr_matrix, sparse.csc_matrix])
def test_correlation_grn_matches_numpy(to_matrix):
    X = _counts()
    corr = bf.metrics.correlation_grn(to_matrix(X))
    assert corr.dtype == np.float32
    assert corr.shape == (8, 8)
    np.testing.assert_allclose(corr, _expected_correlation(X), atol=1e-6)
    assert corr[0, 6] == pytest.approx(1, abs=1e-6)
    assert not corr[[3, 5]].any() and not corr[:, [3, 5]].any()
    assert not np.diag(corr).any()


def test_correlation_grn_spearman_and_bad_input():
    X = _counts()
    spearman = bf.metrics.correlation_grn(sparse.csr_matrix(X), method="spearman")
    np.testing.assert_allclose(spearman, _expected_correlation(X, rank=True), atol=1e-6)
    assert not np.allclose(spearman, bf.metrics.correlation_grn(X))
    with pytest.raises(ValueError, match="'pearson' or 'spearman'"):
        bf.metrics.correlation_grn(X, method="kendall")
    with pytest.raises(ValueError, match="at least 2 cells"):
        bf.metrics.correlation_grn(X[:1])
