import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from scipy import sparse
from sklearn.decomposition import PCA

import bioformers as bf

# One measured target per program of `synthetic_perturbation(seed=0)` (programs 0, 1, 2, 3), held out.
HELD_OUT = ["gene_7", "gene_24", "gene_18", "gene_21"]


@pytest.fixture(scope="session")
def _screen():
    adata = bf.datasets.synthetic_perturbation(n_obs=800, n_vars=60, seed=0)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


@pytest.fixture
def screen(_screen):
    """Log-normalised synthetic screen (sparse X): control, 8 measured and 2 unmeasured targets."""
    return _screen.copy()


def _anndata(X, labels, genes=None, *, categories=None):
    genes = genes or [f"g{j}" for j in range(np.shape(X)[1])]
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical(labels, categories=categories)},
        index=[f"c{i}" for i in range(len(labels))],
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


def _group_means(adata):
    X = adata.X.toarray() if sparse.issparse(adata.X) else adata.X
    return pd.DataFrame(X, columns=adata.var_names).groupby(adata.obs["perturbation"].to_numpy()).mean()


# --- mean profiles and top DE genes ------------------------------------------------------------


def test_mean_profiles_are_group_means_in_category_order(screen):
    profiles = bf.metrics.mean_profiles(screen)
    categories = screen.obs["perturbation"].cat.categories.tolist()
    assert profiles.index.tolist() == categories
    assert profiles.index.name == "perturbation"
    assert profiles.columns.tolist() == screen.var_names.tolist()
    np.testing.assert_allclose(profiles, _group_means(screen).loc[categories], rtol=1e-6)
    dense = screen.copy()
    dense.X = dense.X.toarray()
    np.testing.assert_allclose(bf.metrics.mean_profiles(dense), profiles, rtol=1e-12)


def test_mean_profiles_drop_empty_groups_and_sort_plain_labels():
    X = np.array([[1.5, 2.0], [3.0, 4.5], [5.5, 6.0]])
    adata = _anndata(X, ["b", "control", "b"], categories=["control", "unused", "b"])
    profiles = bf.metrics.mean_profiles(adata)
    assert profiles.index.tolist() == ["control", "b"]
    np.testing.assert_array_equal(profiles.loc["b"], [3.5, 4.0])
    adata.obs["plain"] = ["b", "a", "b"]
    assert bf.metrics.mean_profiles(adata, perturbation_key="plain").index.tolist() == ["a", "b"]
    adata.layers["half"] = X / 2
    np.testing.assert_array_equal(bf.metrics.mean_profiles(adata, layer="half").loc["b"], [1.75, 2.0])
    with pytest.raises(KeyError, match=r"`adata.obs\['guide'\]` not found.*perturbation_key="):
        bf.metrics.mean_profiles(adata, perturbation_key="guide")


def test_top_de_genes_is_scanpys_ranking_on_a_copy(screen, snapshot, assert_unchanged):
    before = snapshot(screen)
    top = bf.metrics.top_de_genes(screen, n_top_genes=10)
    assert_unchanged(before, screen)  # no uns['rank_genes_groups'] written

    reference = screen.copy()
    sc.tl.rank_genes_groups(
        reference, "perturbation", reference="control", method="t-test", rankby_abs=True, n_genes=10
    )
    targets = screen.obs["perturbation"].cat.categories[1:].tolist()
    assert list(top) == targets
    for target in targets:
        assert top[target] == list(reference.uns["rank_genes_groups"]["names"][target])
    # a measured knock-out is its own strongest change; the rest are genes of its program
    program = screen.var["program"]
    assert top["gene_7"][0] == "gene_7"
    assert (program[top["gene_7"]] == program["gene_7"]).mean() >= 0.8


def test_top_de_genes_selected_perturbations_and_errors(screen):
    top = bf.metrics.top_de_genes(screen, perturbations=["gene_2", "unmeasured_1"], n_top_genes=100)
    assert list(top) == ["gene_2", "unmeasured_1"]
    assert len(top["gene_2"]) == screen.n_vars  # capped at the number of genes
    with pytest.raises(ValueError, match=r"control label 'ctrl' is not in.*'control'"):
        bf.metrics.top_de_genes(screen, control="ctrl")
    with pytest.raises(ValueError, match=r"'gene_99'.*Known perturbations: 'gene_7'"):
        bf.metrics.top_de_genes(screen, perturbations=["gene_99"])
    extra = np.flatnonzero(screen.obs["perturbation"] == "gene_2")[1:]
    lonely = screen[np.setdiff1d(np.arange(screen.n_obs), extra)].copy()  # one gene_2 cell left
    with pytest.raises(ValueError, match=r"at least 2 cells per group.*'gene_2' \(1 cell\)"):
        bf.metrics.top_de_genes(lonely)


# --- scores ------------------------------------------------------------------------------------


@pytest.fixture
def small():
    """3 groups x 2 cells, 4 genes: control mean (1, 2, 3, 4), A and B move the genes up and down."""
    X = np.array(
        [
            [0.5, 2.0, 3.0, 4.5],
            [1.5, 2.0, 3.0, 3.5],  # control
            [2.0, 1.0, 3.5, 4.0],
            [2.0, 1.0, 2.5, 4.0],  # A: delta (+1, -1, 0, 0)
            [1.0, 4.0, 3.0, 2.0],
            [1.0, 4.0, 3.0, 2.0],  # B: delta (0, +2, 0, -2)
        ]
    )
    return _anndata(X, ["control"] * 2 + ["A"] * 2 + ["B"] * 2, categories=["control", "A", "B"])


def test_perfect_and_negated_predictions(small):
    observed = bf.metrics.mean_profiles(small)
    control = observed.loc["control"]
    top = {"A": ["g0", "g1", "g2"], "B": ["g1", "g3"]}
    perfect = bf.metrics.perturbation_scores(observed.loc[["A", "B"]], small, top_genes=top)
    assert perfect.index.name == "perturbation" and perfect.index.tolist() == ["A", "B"]
    assert perfect.columns.tolist() == [
        "pearson",
        "pearson_top",
        "pearson_delta",
        "pearson_delta_top",
        "mse_top",
        "l2_top",
        "direction_top",
        "pearson_delta_perturbed",
        "centroid_rank",
    ]
    np.testing.assert_allclose(perfect[["pearson", "pearson_delta", "pearson_delta_top", "direction_top"]], 1.0)
    np.testing.assert_allclose(perfect[["mse_top", "l2_top"]], 0.0, atol=1e-12)

    negated = 2 * control - observed.loc[["A", "B"]]  # control - delta
    scores = bf.metrics.perturbation_scores(negated, small, top_genes=top)
    np.testing.assert_allclose(scores[["pearson_delta", "pearson_delta_top"]], -1.0)
    # A's top genes: deltas (1, -1, 0) -> (-1, 1, 0); the unchanged gene keeps its sign (0)
    assert scores.loc["A", "direction_top"] == pytest.approx(1 / 3)
    assert scores.loc["B", "direction_top"] == 0.0
    # errors are twice the deltas: A on (g0, g1, g2): (2, 2, 0); B on (g1, g3): (4, 4)
    assert scores.loc["A", "mse_top"] == pytest.approx(8 / 3)
    assert scores.loc["A", "l2_top"] == pytest.approx(np.sqrt(8))
    assert scores.loc["B", "mse_top"] == pytest.approx(16)
    assert scores.loc["B", "l2_top"] == pytest.approx(np.sqrt(32))


def test_delta_against_other_perturbations_and_centroid_rank_by_hand(small):
    observed = bf.metrics.mean_profiles(small)  # control (1, 2, 3, 4), A (2, 1, 3, 4), B (1, 4, 3, 2)
    top = {"A": ["g0", "g1"], "B": ["g1", "g3"]}
    perfect = bf.metrics.perturbation_scores(observed.loc[["A", "B"]], small, top_genes=top)
    np.testing.assert_allclose(perfect["pearson_delta_perturbed"], 1.0)
    assert perfect["centroid_rank"].tolist() == [1.0, 1.0]
    no_change = pd.DataFrame([observed.loc["control"]] * 2, index=["A", "B"])
    scores = bf.metrics.perturbation_scores(no_change, small, top_genes=top)
    # A relative to B, the only other perturbation: predicted (0, -2, 0, 2), observed (1, -3, 0, 2)
    expected = np.corrcoef([0, -2, 0, 2], [1, -3, 0, 2])[0, 1]
    assert scores.loc["A", "pearson_delta_perturbed"] == pytest.approx(expected)
    # the control profile lies sqrt(2) from A and sqrt(8) from B: right for A, B's own profile second
    assert scores["centroid_rank"].tolist() == [1.0, 2.0]
    # with no other perturbation there is nothing to compare with
    alone = small[small.obs["perturbation"] != "B"].copy()
    alone.obs["perturbation"] = alone.obs["perturbation"].cat.remove_unused_categories()
    single = bf.metrics.perturbation_scores(observed.loc[["A"]], alone, top_genes={"A": ["g0", "g1"]})
    assert single[["pearson_delta_perturbed", "centroid_rank"]].isna().all(axis=None)


def test_pearson_of_profiles_is_numpys(small):
    predicted = pd.DataFrame([[1.0, 0.0, 3.0, 5.0]], index=["A"], columns=small.var_names)
    scores = bf.metrics.perturbation_scores(predicted, small, top_genes={"A": ["g0", "g1", "g3"]})
    observed = bf.metrics.mean_profiles(small)
    control = observed.loc["control"].to_numpy()
    obs, pred = observed.loc["A"].to_numpy(), predicted.loc["A"].to_numpy()
    assert scores.loc["A", "pearson"] == pytest.approx(np.corrcoef(pred, obs)[0, 1])
    assert scores.loc["A", "pearson_top"] == pytest.approx(np.corrcoef(pred[[0, 1, 3]], obs[[0, 1, 3]])[0, 1])
    assert scores.loc["A", "pearson_delta"] == pytest.approx(np.corrcoef(pred - control, obs - control)[0, 1])


def test_constant_or_missing_predictions_give_nan_quietly(small):
    control = bf.metrics.mean_profiles(small).loc["control"].to_numpy()
    predicted = pd.DataFrame(
        # "no change", a constant shift (correlation undefined too), and a control row (skipped)
        [control, control + 0.3, np.full(4, np.nan)],
        index=["A", "B", "control"],
        columns=small.var_names,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = bf.metrics.perturbation_scores(predicted, small, top_genes={"A": ["g0", "g1"], "B": ["g1", "g3"]})
    assert scores.index.tolist() == ["A", "B"]  # the control row is skipped
    assert scores[["pearson_delta", "pearson_delta_top"]].isna().all().all()
    assert np.isfinite(scores["pearson"]).all()
    assert scores.loc["A", "direction_top"] == 0.0

    missing = pd.DataFrame([[np.nan, 1.0, 2.0, 3.0]], index=["A"], columns=small.var_names)
    row = bf.metrics.perturbation_scores(missing, small, top_genes={"A": ["g1"]}).loc["A"]
    assert row.isna().all()


def test_scores_read_predicted_cells_and_align_genes(small):
    observed = bf.metrics.mean_profiles(small)
    rng = np.random.default_rng(0)
    order = [3, 1, 0, 2]
    cells = np.vstack([observed.loc[group].to_numpy()[order] + d for group in ["A", "B"] for d in (-0.1, 0.1)])
    cells = np.vstack([cells, rng.normal(size=(2, 4))])  # predicted control cells: ignored
    predicted = _anndata(cells, ["A", "A", "B", "B", "control", "control"], [f"g{j}" for j in order])
    top = {"A": ["g0", "g1"], "B": ["g1", "g3"]}
    from_cells = bf.metrics.perturbation_scores(predicted, small, top_genes=top)
    from_means = bf.metrics.perturbation_scores(observed.loc[["A", "B"]], small, top_genes=top)
    pd.testing.assert_frame_equal(from_cells, from_means)


def test_scores_compute_top_genes_like_top_de_genes(screen):
    profiles = bf.metrics.mean_profiles(screen)
    predicted = profiles.loc[["gene_2", "unmeasured_0"]] + 0.01 * np.arange(screen.n_vars) ** 0.5
    top = bf.metrics.top_de_genes(screen, perturbations=["gene_2", "unmeasured_0"], n_top_genes=5)
    pd.testing.assert_frame_equal(
        bf.metrics.perturbation_scores(predicted, screen, n_top_genes=5),
        bf.metrics.perturbation_scores(predicted, screen, top_genes=top),
    )
    # other gene sets give other top-gene scores
    other = {"gene_2": screen.var_names[:5].tolist(), "unmeasured_0": screen.var_names[:5].tolist()}
    assert not np.allclose(
        bf.metrics.perturbation_scores(predicted, screen, top_genes=other)["mse_top"],
        bf.metrics.perturbation_scores(predicted, screen, top_genes=top)["mse_top"],
    )


def test_scores_errors(small, snapshot, assert_unchanged):
    observed = bf.metrics.mean_profiles(small)
    top = {"A": ["g0"], "B": ["g1"]}
    before = snapshot(small)
    with pytest.raises(ValueError, match=r"missing from `predicted`: 'g3'; not in `observed`: 'x'"):
        bf.metrics.perturbation_scores(observed.rename(columns={"g3": "x"}), small, top_genes=top)
    with pytest.raises(ValueError, match=r"'C'.*Known perturbations: 'A', 'B'"):
        bf.metrics.perturbation_scores(observed.rename(index={"B": "C"}), small, top_genes=top)
    with pytest.raises(ValueError, match=r"`top_genes` has no genes for 'B'"):
        bf.metrics.perturbation_scores(observed, small, top_genes={"A": ["g0"]})
    with pytest.raises(ValueError, match=r"unknown genes 'nope'"):
        bf.metrics.perturbation_scores(observed, small, top_genes={"A": ["g0"], "B": ["nope"]})
    with pytest.raises(ValueError, match="control label 'ctrl' is not in"):
        bf.metrics.perturbation_scores(observed, small, control="ctrl", top_genes=top)
    with pytest.raises(KeyError, match="Layer 'counts' not found"):
        bf.metrics.perturbation_scores(observed, small, layer="counts", top_genes=top)
    with pytest.raises(TypeError, match="DataFrame of mean profiles"):
        bf.metrics.perturbation_scores(observed.to_numpy(), small, top_genes=top)
    assert_unchanged(before, small)


# --- mean collapse -----------------------------------------------------------------------------


def test_mean_collapse_warns_on_identical_predictions():
    control = np.zeros(5)
    delta = np.array([1.0, -0.5, 0.2, 0.0, 2.0])
    with pytest.warns(UserWarning, match="mean collapse"):
        value = bf.metrics.mean_collapse(np.vstack([delta, 2 * delta, delta + 0.0]), control)
    assert value == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bf.metrics.mean_collapse(np.vstack([delta, delta]), control, warn=False) == pytest.approx(1.0)


def test_mean_collapse_value_and_quiet_on_distinct_predictions():
    rng = np.random.default_rng(0)
    predicted = rng.normal(size=(4, 30))
    control = rng.normal(size=30)
    corr = np.corrcoef(predicted - control)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = bf.metrics.mean_collapse(predicted, control)
    assert value == pytest.approx(corr[np.triu_indices(4, 1)].mean())
    assert abs(value) < 0.5
    # rows that are missing or constant are left out; fewer than two rows left: NaN
    with_nan = np.vstack([predicted[:2], np.full(30, np.nan), control])
    assert bf.metrics.mean_collapse(with_nan, control) == pytest.approx(corr[0, 1])
    assert np.isnan(bf.metrics.mean_collapse(predicted[:1], control))
    assert np.isnan(bf.metrics.mean_collapse(np.vstack([control, control]), control))


def test_mean_collapse_aligns_a_series_by_gene():
    genes = ["a", "b", "c"]
    predicted = pd.DataFrame([[1.0, 2.0, 4.0], [2.0, 1.0, 3.0]], columns=genes)
    control = pd.Series([0.0, 1.0, 2.0], index=genes)
    expected = bf.metrics.mean_collapse(predicted.to_numpy(), control.to_numpy(), warn=False)
    assert bf.metrics.mean_collapse(predicted, control[::-1], warn=False) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no value for genes 'c'"):
        bf.metrics.mean_collapse(predicted, control[:2])


# --- baselines ---------------------------------------------------------------------------------


def test_no_change_and_train_mean_by_hand():
    rng = np.random.default_rng(0)
    labels = ["control"] * 4 + ["A"] * 3 + ["B"] * 2 + ["A+B"] * 2
    train = _anndata(rng.random((len(labels), 5)), labels)
    means = _group_means(train)
    predicted = bf.metrics.perturbation_baselines(train, ["C", "A"], methods=["no_change", "train_mean"])
    assert list(predicted) == ["no_change", "train_mean"]
    for table in predicted.values():
        assert table.index.tolist() == ["C", "A"] and table.index.name == "perturbation"
        assert table.columns.tolist() == train.var_names.tolist()
    np.testing.assert_allclose(predicted["no_change"], np.tile(means.loc["control"], (2, 1)))
    # control + mean of (group mean - control) over A, B and the combination A+B, each one group
    expected = means.loc[["A", "B", "A+B"]].mean()
    np.testing.assert_allclose(predicted["train_mean"], np.tile(expected, (2, 1)))


def _planted_linear(n_genes=12, k=2, n_states=10, seed=0):
    """Cells whose group means differ from control by exactly ``B W Bᵀ[targets]``.

    Every cell is ``5 + B a + delta``, with the same cell states ``a`` in every group, so the gene
    embedding spans exactly the columns of ``B`` (genes x k). The measured training targets come
    in pairs with opposite rows of ``B``, so their mean embedding, and so the fitted offset ``b``,
    is zero and the linear model holds exactly.
    """
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(n_genes, k))
    B[1], B[3], B[5] = -B[0], -B[2], -B[4]
    W = rng.normal(size=(k, k))
    genes = [f"g{j}" for j in range(n_genes)]

    def delta(*targets):
        return B @ W @ B[list(targets)].sum(axis=0)

    groups = {"control": np.zeros(n_genes), **{genes[j]: delta(j) for j in range(6)}}
    groups["elsewhere"] = B @ rng.normal(size=k)  # an unmeasured target: not part of the fit
    states = rng.normal(size=(n_states, k)) @ B.T
    X = np.vstack([5 + states + shift for shift in groups.values()])
    return _anndata(X, np.repeat(list(groups), n_states), genes), delta


@pytest.mark.parametrize("as_sparse", [False, True])
def test_linear_recovers_a_planted_linear_response(as_sparse):
    train, delta = _planted_linear()
    if as_sparse:
        train.X = sparse.csr_matrix(train.X)
    requested = ["g8", "g9+g10", "g0", "unmeasured"]
    # n_components=5 exceeds the rank (2) of the data: it is capped
    linear = bf.metrics.perturbation_baselines(train, requested, methods="linear", n_components=5, ridge=1e-8)["linear"]
    control = bf.metrics.mean_profiles(train).loc["control"].to_numpy()
    np.testing.assert_allclose(linear.loc["g8"] - control, delta(8), atol=1e-6)
    np.testing.assert_allclose(linear.loc["g9+g10"] - control, delta(9, 10), atol=1e-6)
    np.testing.assert_allclose(linear.loc["g0"] - control, delta(0), atol=1e-6)
    assert linear.loc["unmeasured"].isna().all()  # the linear model cannot represent it


def test_linear_is_the_closed_form_on_sklearn_pca(screen):
    train = screen[~screen.obs["perturbation"].isin(HELD_OUT)].copy()
    requested = [*HELD_OUT, "gene_7+gene_24"]
    linear = bf.metrics.perturbation_baselines(train, requested, methods=["linear"], n_components=6, ridge=0.5)
    X = train.X.toarray().astype(np.float64)
    pca = PCA(n_components=6, svd_solver="full").fit(X)
    G = pca.components_.T * pca.singular_values_ / np.sqrt(train.n_obs)  # genes x K
    means = _group_means(train)
    fitted = ["gene_2", "gene_40", "gene_43", "gene_50"]  # the unmeasured training targets are left out
    Y = (means.loc[fitted] - means.loc["control"]).to_numpy().T
    b = Y.mean(axis=1, keepdims=True)
    P = G[train.var_names.get_indexer(fitted)]
    eye = 0.5 * np.eye(6)
    W = np.linalg.inv(G.T @ G + eye) @ G.T @ (Y - b) @ P @ np.linalg.inv(P.T @ P + eye)
    P_new = np.vstack([G[train.var_names.get_indexer(HELD_OUT)], G[train.var_names.get_indexer(HELD_OUT[:2])].sum(0)])
    expected = means.loc["control"].to_numpy() + (b + G @ W @ P_new.T).T
    np.testing.assert_allclose(linear["linear"], expected, rtol=1e-6, atol=1e-8)


def test_linear_takes_a_given_gene_embedding(screen):
    train = screen[~screen.obs["perturbation"].isin(HELD_OUT)].copy()
    default = bf.metrics.perturbation_baselines(train, HELD_OUT, methods="linear", n_components=6, ridge=0.5)
    X = train.X.toarray().astype(np.float64)
    pca = PCA(n_components=6, svd_solver="full").fit(X)
    train.varm["pcs"] = pca.components_.T * pca.singular_values_ / np.sqrt(train.n_obs)
    # the PCA embedding passed by hand (as a varm key, or as an array) gives the default model
    for given in ("pcs", train.varm["pcs"]):
        linear = bf.metrics.perturbation_baselines(train, HELD_OUT, methods="linear", ridge=0.5, gene_embedding=given)
        np.testing.assert_allclose(linear["linear"], default["linear"], rtol=1e-6, atol=1e-8)
    # another embedding gives another model
    other = np.random.default_rng(0).normal(size=(train.n_vars, 6))
    random = bf.metrics.perturbation_baselines(train, HELD_OUT, methods="linear", ridge=0.5, gene_embedding=other)
    assert not np.allclose(random["linear"], default["linear"])


def test_linear_gene_embedding_is_checked(screen):
    train = screen[~screen.obs["perturbation"].isin(HELD_OUT)].copy()
    with pytest.raises(KeyError, match=r"bf\.tl\.gene_embeddings"):
        bf.metrics.perturbation_baselines(train, HELD_OUT, methods="linear", gene_embedding="bioformers_genes")
    with pytest.raises(ValueError, match="one row per gene"):
        bf.metrics.perturbation_baselines(train, HELD_OUT, methods="linear", gene_embedding=np.ones((3, 4)))
    bad = np.ones((train.n_vars, 4))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="missing or infinite"):
        bf.metrics.perturbation_baselines(train, HELD_OUT, methods="linear", gene_embedding=bad)


def test_linear_beats_train_mean_on_held_out_targets(screen):
    train = screen[~screen.obs["perturbation"].isin(HELD_OUT)].copy()
    assert sorted(screen.var["program"][HELD_OUT]) == [0, 1, 2, 3]
    predicted = bf.metrics.perturbation_baselines(train, HELD_OUT, methods=["no_change", "train_mean", "linear"])
    top = bf.metrics.top_de_genes(screen, perturbations=HELD_OUT)
    scores = {
        method: bf.metrics.perturbation_scores(table, screen, top_genes=top) for method, table in predicted.items()
    }
    assert scores["no_change"]["pearson_delta"].isna().all()
    assert scores["linear"]["pearson_delta"].mean() > scores["train_mean"]["pearson_delta"].mean() + 0.1
    # train_mean predicts one delta for all: collapsed; the linear model's deltas differ by program
    control = bf.metrics.mean_profiles(train).loc["control"]
    with pytest.warns(UserWarning, match="mean collapse"):
        assert bf.metrics.mean_collapse(predicted["train_mean"], control) == pytest.approx(1.0)
    assert bf.metrics.mean_collapse(predicted["linear"], control, warn=False) < 0.9


def test_mlp_is_finite_and_seeded(screen):
    train = screen[~screen.obs["perturbation"].isin(HELD_OUT)].copy()
    requested = [*HELD_OUT[:2], "unmeasured_0", "never_seen", "also_never_seen"]
    first = bf.metrics.perturbation_baselines(train, requested, methods=["mlp"], n_cells=50)["mlp"]
    assert first.shape == (5, screen.n_vars)
    assert first.index.tolist() == requested
    assert np.isfinite(first.to_numpy()).all()
    pd.testing.assert_frame_equal(
        first, bf.metrics.perturbation_baselines(train, requested, methods="mlp", n_cells=50)["mlp"]
    )
    other = bf.metrics.perturbation_baselines(train, requested, methods="mlp", n_cells=50, seed=1)["mlp"]
    assert not np.allclose(first, other)
    # targets outside the vocabulary have an all-zero indicator: the same prediction
    np.testing.assert_array_equal(first.loc["never_seen"], first.loc["also_never_seen"])
    assert not np.allclose(first.loc["gene_7"], first.loc["never_seen"])


def test_baselines_leave_train_unchanged(screen, snapshot, assert_unchanged):
    train = screen[~screen.obs["perturbation"].isin(HELD_OUT)].copy()
    before = snapshot(train)
    bf.metrics.perturbation_baselines(train, HELD_OUT, methods=["no_change", "train_mean", "linear"])
    bf.metrics.perturbation_scores(bf.metrics.mean_profiles(train).iloc[1:3], train)
    assert_unchanged(before, train)


def test_baseline_errors(small, snapshot, assert_unchanged):
    before = snapshot(small)
    with pytest.raises(ValueError, match=r"Unknown method\(s\) 'gears'.*'no_change', 'train_mean', 'linear', 'mlp'"):
        bf.metrics.perturbation_baselines(small, ["C"], methods=["linear", "gears"])
    with pytest.raises(ValueError, match=r"control label 'ctrl' is not in.*'A', 'B', 'control'"):
        bf.metrics.perturbation_baselines(small, ["C"], control="ctrl")
    with pytest.raises(ValueError, match="control label 'control'"):
        bf.metrics.perturbation_baselines(small, ["control"])
    with pytest.raises(ValueError, match="more than once"):
        bf.metrics.perturbation_baselines(small, ["C", "C"])
    with pytest.raises(ValueError, match="No training perturbation targets a measured gene"):
        bf.metrics.perturbation_baselines(small, ["g0"], methods=["linear"])
    with pytest.raises(ValueError, match="ridge"):
        bf.metrics.perturbation_baselines(small, ["C"], ridge=-1)
    only_control = small[small.obs["perturbation"] == "control"].copy()
    with pytest.raises(ValueError, match=r"no perturbed cells.*methods=\['no_change'\]"):
        bf.metrics.perturbation_baselines(only_control, ["C"], methods=["train_mean"])
    assert bf.metrics.perturbation_baselines(only_control, ["C"], methods=["no_change"])["no_change"].shape == (1, 4)
    no_control = _anndata(small.X[2:], small.obs["perturbation"][2:].tolist(), categories=["control", "A", "B"])
    with pytest.raises(ValueError, match="No cell is labelled 'control'"):
        bf.metrics.perturbation_baselines(no_control, ["C"])
    assert_unchanged(before, small)


def test_raw_counts_are_flagged():
    counts = _anndata(np.array([[3.0, 0.0], [5.0, 2.0], [1.0, 7.0]]), ["control", "A", "A"])
    with pytest.warns(UserWarning, match=r"raw counts.*sc.pp.log1p"):
        bf.metrics.perturbation_baselines(counts, ["A"], methods=["train_mean"])


def test_top_de_genes_with_many_perturbations_warns_nothing():
    # 30 perturbations: Scanpy's per-group result columns used to trigger pandas' fragmentation warning.
    rng = np.random.default_rng(0)
    labels = np.array(["control"] * 60 + [f"KO{i}" for i in range(30) for _ in range(4)])
    adata = ad.AnnData(
        X=sparse.csr_matrix(np.log1p(rng.poisson(2.0, size=(labels.size, 40)).astype(np.float32))),
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(labels.size)]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        top = bf.metrics.top_de_genes(adata, n_top_genes=5)
    assert len(top) == 30
    assert all(len(genes) == 5 for genes in top.values())
