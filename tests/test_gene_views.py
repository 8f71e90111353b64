"""What the gene-level views show a user first: sparse group GRNs under safe keys, rankings of
detected genes only, honest prediction scores, readable heatmaps and axes."""

import anndata as ad
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import bioformers as bf
from bioformers._keys import Keys, safe_name

LABELS = ["CD14+ Monocytes", "B cells", "T/NK cells"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def fitted(trained):
    """The session's tiny model and a fresh copy of its training AnnData."""
    model, adata = trained
    return model, adata.copy()


def _labelled(adata, labels=LABELS):
    """`obs["kind"]` with labels that have spaces, '+' and '/'."""
    adata.obs["kind"] = pd.Categorical([labels[i % len(labels)] for i in range(adata.n_obs)], categories=labels)
    return adata


def _dense(matrix):
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


def _tick_labels(axis):
    return [label.get_text() for label in axis.get_ticklabels()]


# --- keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "name"),
    [("CD14+ Monocytes", "CD14_Monocytes"), ("T/NK cells", "T_NK_cells"), ("type_0", "type_0"), ("a.b", "a_b")],
)
def test_safe_name_keeps_letters_digits_and_underscores(label, name):
    assert safe_name(label) == name
    assert safe_name(name) == name  # a key's own suffix finds the same key
    assert Keys().attention_group(label) == f"bioformers_attention_{name}"


# --- attention_grn: storage ------------------------------------------------------------------------


def test_group_matrices_are_sparse_top_k_and_survive_h5ad(fitted, tmp_path):
    model, adata = fitted
    dense = bf.tl.attention_grn(adata, model, groupby="cell_type", top_k=None, copy=True)
    bf.tl.attention_grn(adata, model, groupby="cell_type", top_k=5)
    assert not sparse.issparse(adata.varp["bioformers_attention"])  # the overall matrix stays dense
    assert adata.uns["bioformers_attention"]["params"]["top_k"] == 5
    for group in adata.obs["cell_type"].cat.categories:
        key = f"bioformers_attention_{group}"
        top, full = adata.varp[key], dense.varp[key]
        assert sparse.isspmatrix_csr(top) and top.dtype == np.float32
        nnz = top.getnnz(axis=1)
        assert nnz.max() <= 5 and nnz.min() > 0
        # every stored entry is the dense value, and at least the row's 5th largest
        top = top.tocoo()
        np.testing.assert_array_equal(top.data, full[top.row, top.col])
        fifth = np.sort(full, axis=1)[:, -5]
        assert (top.data >= fifth[top.row]).all()

    path = tmp_path / "sparse.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for key in adata.varp:
        assert sparse.issparse(back.varp[key]) == sparse.issparse(adata.varp[key])
        np.testing.assert_array_equal(_dense(back.varp[key]), _dense(adata.varp[key]))
    # plots read the sparse matrices
    group = adata.obs["cell_type"].cat.categories[0]
    gene = adata.var_names[int(np.argmax(back.var["bioformers_attention_detected"]))]
    ax = bf.pl.attention(back, gene, group=group, top=3, min_detection=0, show=False)
    assert "top 5 per row" in ax.figure.axes[1].get_ylabel()  # the colorbar says what is stored
    bf.pl.grn(back, gene, group=group, top=3, min_detection=0, show=False)


def test_top_k_is_checked(fitted, snapshot, assert_unchanged):
    model, adata = fitted
    before = snapshot(adata)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            bf.tl.attention_grn(adata, model, groupby="cell_type", top_k=bad)
    with pytest.raises(ValueError, match="min_detection"):
        bf.tl.attention_grn(adata, model, min_detection=1.5)
    assert_unchanged(before, adata)


def test_group_keys_are_safe_and_plots_find_groups_by_label(fitted, tmp_path):
    model, adata = fitted
    _labelled(adata)
    bf.tl.attention_grn(adata, model, groupby="kind")
    written = [key for key in adata.varp if key.startswith("bioformers_attention_")]
    assert sorted(written) == sorted(f"bioformers_attention_{safe_name(label)}" for label in LABELS)
    assert not any(character in key for key in written for character in " +/.")
    groups = adata.uns["bioformers_attention"]["groups"]
    assert list(groups["label"]) == LABELS
    assert list(groups["key"]) == [Keys().attention_group(label) for label in LABELS]
    assert list(groups["n_cells"]) == [int((adata.obs["kind"] == label).sum()) for label in LABELS]
    assert list(adata.varm["bioformers_attention_detected"].columns) == [safe_name(label) for label in LABELS]

    path = tmp_path / "labels.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    gene = back.var_names[0]
    ax = bf.pl.attention(back, gene, group="CD14+ Monocytes", top=3, show=False)
    assert "(CD14+ Monocytes)" in ax.get_title()
    ax = bf.pl.grn(back, gene, group="CD14+ Monocytes", top=3, show=False)
    assert "attention, CD14+ Monocytes" in ax.get_title()
    with pytest.raises(KeyError, match=r"'CD14\+ Monocytes', 'B cells'.*Did you mean 'B cells'"):
        bf.pl.attention(back, group="B cell")


def test_labels_that_give_the_same_key_are_refused(fitted, snapshot, assert_unchanged):
    model, adata = fitted
    _labelled(adata, ["CD4+", "CD4-", "other"])
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"'CD4\+' and 'CD4-'.*bioformers_attention_CD4.*Rename"):
        bf.tl.attention_grn(adata, model, groupby="kind")
    assert_unchanged(before, adata)


def test_a_group_of_one_cell_warns(fitted):
    model, adata = fitted
    labels = ["many"] * adata.n_obs
    labels[3] = "solo"
    adata.obs["kind"] = pd.Categorical(labels)
    with pytest.warns(UserWarning, match=r"fewer than 10 cells: 'solo' \(1 cell\).*noise"):
        bf.tl.attention_grn(adata, model, groupby="kind")
    assert "bioformers_attention_solo" in adata.varp  # written, but the user was told


# --- detection: rankings leave rarely expressed genes out ---------------------------------------


def test_received_ranks_only_genes_detected_often_enough(fitted):
    model, adata = fitted
    binned = adata.layers["bioformers_binned"].toarray()
    binned[2:, 0] = 0  # gene 0: expressed in two cells only
    adata.layers["bioformers_binned"] = sparse.csr_matrix(binned)
    bf.tl.attention_grn(adata, model, groupby="cell_type")
    detected = (binned > 0).mean(axis=0)
    np.testing.assert_allclose(adata.var["bioformers_attention_detected"], detected, rtol=1e-6)
    for group in adata.obs["cell_type"].cat.categories:
        cells = (adata.obs["cell_type"] == group).to_numpy()
        np.testing.assert_allclose(
            adata.varm["bioformers_attention_detected"][group], (binned[cells] > 0).mean(axis=0), rtol=1e-6
        )
    received = adata.var["bioformers_attention_received"].to_numpy()
    rare = detected < 0.05
    assert rare[0]
    assert np.isnan(received[rare]).all() and np.isfinite(received[~rare]).all()
    np.testing.assert_allclose(received[~rare], adata.varp["bioformers_attention"].sum(axis=0)[~rare], rtol=1e-6)
    assert adata.var["bioformers_attention_received"].nlargest(3).index.isin(adata.var_names[~rare]).all()
    assert adata.uns["bioformers_attention"]["params"]["min_detection"] == 0.05

    everything = bf.tl.attention_grn(adata, model, min_detection=0, copy=True)
    assert np.isfinite(everything.var["bioformers_attention_received"]).all()


@pytest.fixture
def rare():
    """An attention GRN whose strongest gene, gene_1, is expressed in 2% of cells, as attention_grn records it."""
    adata = bf.datasets.synthetic(n_obs=30, n_vars=12)
    keys = Keys()
    matrix = np.full((12, 12), 0.1, dtype=np.float32)
    matrix[:, 1] = matrix[1, :] = 0.9  # gene_1: attended to by all, the partner of every gene
    matrix[0, 2:6] = [0.5, 0.4, 0.3, 0.2]
    adata.varp[keys.attention] = matrix
    adata.var[keys.attention_detected] = np.where(np.arange(12) == 1, 0.02, 0.5).astype(np.float32)
    adata.uns[keys.attention] = {"params": {"min_detection": 0.05}}
    return adata


def test_attention_plots_leave_rarely_detected_genes_out(rare):
    ax = bf.pl.attention(rare, top=3, show=False)
    assert "gene_1" not in _tick_labels(ax.xaxis)
    assert "not ranked: 1 genes expressed in < 5% of cells" in ax.get_title()
    ax = bf.pl.attention(rare, "gene_0", top=3, show=False)
    assert _tick_labels(ax.yaxis) == ["gene_0", "gene_2", "gene_3", "gene_4"]
    ax = bf.pl.grn(rare, "gene_0", top=3, show=False)
    assert {text.get_text() for text in ax.texts} == {"gene_0", "gene_2", "gene_3", "gene_4"}
    assert "not ranked" in ax.get_title()
    # min_detection=0 ranks every gene: gene_1 comes back first
    ax = bf.pl.attention(rare, "gene_0", top=3, min_detection=0, show=False)
    assert _tick_labels(ax.yaxis)[1] == "gene_1"
    assert "not ranked" not in ax.get_title()
    with pytest.warns(UserWarning, match=r"gene_1 is expressed in 2.0% of the cells"):
        bf.pl.grn(rare, "gene_1", top=3, show=False)


# --- did you mean ----------------------------------------------------------------------------------


def _markers():
    adata = bf.datasets.synthetic(n_obs=20, n_vars=8)
    adata.var_names = ["CD3E", "CD3D", "CD79A", "LYZ", "MS4A1", "NKG7", "GNLY", "CST3"]
    adata.varp["bioformers_attention"] = np.random.default_rng(0).random((8, 8), dtype=np.float32)
    return adata


@pytest.mark.parametrize(
    ("asked", "suggested"),
    [("CD3", r"Did you mean one of 'CD3D', 'CD3E'\?"), ("cd79a", r"Did you mean 'CD79A'\?"), ("LYZZ", "'LYZ'")],
)
def test_unknown_gene_suggests_the_gene_meant(asked, suggested):
    adata = _markers()
    with pytest.raises(KeyError, match=rf"Genes not found: '{asked}'\.{'.*' if asked == 'LYZZ' else ' '}{suggested}"):
        bf.pl.grn(adata, asked)
    with pytest.raises(KeyError, match=suggested):
        bf.pl.attention(adata, asked)


def test_a_gene_family_with_one_member_suggests_it():
    adata = _markers()[:, [0, 2, 3]].copy()
    with pytest.raises(KeyError, match=r"Did you mean 'CD3E'\?"):
        bf.pl.grn(adata, "CD3")


# --- predicted_vs_observed ---------------------------------------------------------------------------


def _predicted(masked: float | None, record: bool = True):
    adata = bf.datasets.synthetic(n_obs=60, n_vars=15)
    bf.pp.bin(adata)
    binned = adata.layers["bioformers_binned"].toarray()
    adata.layers["bioformers_predicted_bins"] = np.zeros_like(binned)  # predicts "not expressed" everywhere
    adata.layers["bioformers_predicted_bins"][:, :5] = binned[:, :5]  # ... except on 5 genes, exactly
    if record:
        params = {"scale": "normalized counts"} | ({} if masked is None else {"mask_ratio": masked})
        adata.uns["bioformers_predicted"] = {"params": params}
    return adata, binned


def test_predicted_vs_observed_reports_expressed_values_and_the_all_zero_baseline():
    adata, binned = _predicted(masked=0.15)
    ax = bf.pl.predicted_vs_observed(adata, show=False)
    expressed = binned > 0
    on_expressed = expressed[:, :5].sum() / expressed.sum()
    all_values = (binned[:, :5].size + (~expressed[:, 5:]).sum()) / binned.size
    lines = ax.get_title().split("\n")
    assert lines[0] == f"exact bin for {on_expressed:.1%} of expressed values"
    assert lines[1] == f"all values: {all_values:.1%}; predicting 0 everywhere: {1 - expressed.mean():.1%}"
    assert lines[2] == "masked: each value hidden while predicted (mask_ratio=0.15)"


def test_predicted_vs_observed_says_when_nothing_was_masked():
    adata, _ = _predicted(masked=None)
    title = bf.pl.predicted_vs_observed(adata, show=False).get_title()
    assert title.split("\n")[2].startswith("not masked")
    adata, _ = _predicted(masked=None, record=False)
    assert len(bf.pl.predicted_vs_observed(adata, show=False).get_title().split("\n")) == 2


def test_predicted_vs_observed_leaves_out_genes_the_model_does_not_know():
    adata, _ = _predicted(masked=0.15)
    adata.layers["bioformers_predicted_bins"][:, 5:] = -1  # as bf.tl.predict writes unknown genes
    title = bf.pl.predicted_vs_observed(adata, show=False).get_title()
    assert title.startswith("exact bin for 100.0% of expressed values\nall values: 100.0%")


# --- gene_programs, embedding ------------------------------------------------------------------------


def _program(n_genes=80, core=12):
    adata = bf.datasets.synthetic(n_obs=10, n_vars=n_genes)
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(n_genes, 16))
    embedding[core:, 0] = 0
    embedding[:core, 0] = 8  # a tight core, apart from the rest
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    adata.varp["bioformers_similarity"] = (unit @ unit.T).astype(np.float32)
    adata.var["bioformers_program"] = pd.Categorical(["0"] * n_genes)
    return adata


def test_gene_programs_caps_the_genes_shown_at_the_most_central():
    adata = _program()
    ax = bf.pl.gene_programs(adata, "0", show=False)
    assert len(ax.get_xticks()) == len(ax.get_yticks()) == 50
    assert ax.get_title() == "program 0: the 50 most central of 80 genes"
    ax = bf.pl.gene_programs(adata, "0", max_genes=12, show=False)
    assert sorted(_tick_labels(ax.yaxis)) == sorted(adata.var_names[:12])  # the planted core
    assert min(label.get_fontsize() for label in ax.get_yticklabels()) >= 6  # readable
    ax = bf.pl.gene_programs(adata, "0", max_genes=None, show=False)
    assert len(ax.get_yticks()) == 80
    with pytest.raises(ValueError, match="max_genes"):
        bf.pl.gene_programs(adata, "0", max_genes=1)


def test_umap_axes_read_umap1_and_umap2():
    adata = bf.datasets.synthetic(n_obs=80, n_vars=10)
    adata.obsm["X_bioformers"] = np.random.default_rng(0).normal(size=(adata.n_obs, 8))
    ax = bf.pl.embedding(adata, color="cell_type", show=False)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("UMAP1", "UMAP2")
    axes = bf.pl.embedding(adata, color=["cell_type", "batch"], show=False)
    assert [(a.get_xlabel(), a.get_ylabel()) for a in axes] == [("UMAP1", "UMAP2")] * 2
