import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch
from scipy import sparse

import bioformers as bf
from bioformers._keys import Keys

N_OBS, N_VARS = 30, 12


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _fill(adata, base="bioformers", seed=0):
    """Write what bf.pp.bin, bf.tl.predict, bf.tl.attention_grn and bf.tl.gene_programs write."""
    rng = np.random.default_rng(seed)
    keys = Keys(base)
    bins = rng.integers(0, 6, size=(adata.n_obs, adata.n_vars)) * (rng.random((adata.n_obs, adata.n_vars)) < 0.4)
    adata.layers[keys.binned] = sparse.csr_matrix(bins.astype(np.int16))
    adata.uns[keys.binned] = {"params": {"method": "value", "cutoff": 8.0, "bins_per_octave": 3}, "n_tokens": 8}
    noise = rng.integers(-1, 2, size=bins.shape) * (rng.random(bins.shape) < 0.3)
    adata.layers[keys.predicted_bins] = np.clip(bins + noise, 0, 6).astype(np.int16)
    adata.layers[keys.predicted] = adata.layers[keys.predicted_bins].astype(np.float32)
    adata.varp[keys.attention] = rng.random((adata.n_vars, adata.n_vars), dtype=np.float32)
    adata.varp[keys.attention_group("a")] = rng.random((adata.n_vars, adata.n_vars), dtype=np.float32)
    adata.uns[keys.attention] = {"params": {"groupby": "cell_type", "groups": ["a"]}}
    # program "0": two tight blocks, the even and the odd genes of 0-7, interleaved so that only
    # clustering makes them contiguous; the rest program "1" / unassigned
    embedding = rng.normal(size=(adata.n_vars, 6)) * 0.3
    embedding[0:8:2, 0] += 3
    embedding[1:8:2, 1] += 3
    embedding[8:, 2] += 3
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    adata.varm[keys.gene_embedding] = unit.astype(np.float32)
    adata.varp[keys.similarity] = (unit @ unit.T).astype(np.float32)
    adata.var[keys.program] = pd.Categorical(
        ["0"] * 8 + ["1"] * 3 + ["unassigned"], categories=["0", "1", "unassigned"]
    )
    return adata


@pytest.fixture
def adata():
    return _fill(bf.datasets.synthetic(n_obs=N_OBS, n_vars=N_VARS))


def _tick_labels(axis):
    return [label.get_text() for label in axis.get_ticklabels()]


def _genes(adata, positions):
    return [adata.var_names[i] for i in positions]


# --- attention ---------------------------------------------------------------------------------


def test_attention_of_a_gene_list_shows_the_submatrix_in_that_order(adata):
    genes = _genes(adata, [5, 0, 9, 2])
    ax = bf.pl.attention(adata, genes, show=False)
    assert isinstance(ax, Axes)
    index = [5, 0, 9, 2]
    np.testing.assert_array_equal(ax.images[0].get_array(), adata.varp["bioformers_attention"][np.ix_(index, index)])
    assert _tick_labels(ax.xaxis) == genes and _tick_labels(ax.yaxis) == genes
    assert len(ax.figure.axes) == 2  # heatmap and colorbar
    assert ax.get_title() == "attention among 4 genes (all cells)"


def test_attention_of_one_gene_ranks_partners_by_the_larger_direction(adata):
    matrix = np.full((N_VARS, N_VARS), 0.05, dtype=np.float32)
    matrix[0, 5] = 0.9  # gene_0 attends to gene_5
    matrix[7, 0] = 0.8  # gene_7 attends to gene_0
    matrix[3, 0], matrix[0, 3] = 0.7, 0.1
    matrix[2, 0] = matrix[0, 2] = 0.6  # the highest mean, but not in the top 3 by max
    matrix[0, 0] = 1.0  # self-attention is no partner
    adata.varp["bioformers_attention"] = matrix
    ax = bf.pl.attention(adata, "gene_0", top=3, show=False)
    expected = ["gene_0", "gene_5", "gene_7", "gene_3"]
    assert _tick_labels(ax.yaxis) == expected
    index = [0, 5, 7, 3]
    np.testing.assert_array_equal(ax.images[0].get_array(), matrix[np.ix_(index, index)])
    assert "gene_0" in ax.get_title()


def test_attention_without_genes_shows_the_most_attended(adata):
    received = adata.varp["bioformers_attention"].sum(axis=0)
    ax = bf.pl.attention(adata, top=4, show=False)
    assert _tick_labels(ax.xaxis) == _genes(adata, np.argsort(-received)[:4])


def test_attention_of_a_group_and_heads(adata):
    per_group = adata.varp["bioformers_attention_a"]
    ax = bf.pl.attention(adata, ["gene_1", "gene_4"], group="a", show=False)
    np.testing.assert_array_equal(ax.images[0].get_array(), per_group[np.ix_([1, 4], [1, 4])])
    assert "(a)" in ax.get_title()

    heads = np.random.default_rng(1).random((N_VARS, N_VARS, 2), dtype=np.float32)
    adata.varp["bioformers_attention"] = heads  # as written with keep_heads=True
    ax = bf.pl.attention(adata, ["gene_1", "gene_4"], show=False)
    np.testing.assert_allclose(ax.images[0].get_array(), heads[np.ix_([1, 4], [1, 4])].mean(axis=-1))


def test_attention_missing_names_the_tool(adata):
    with pytest.raises(KeyError, match=r"attention_b.*Groups with a matrix: 'a'.*groupby="):
        bf.pl.attention(adata, group="b")
    del adata.varp["bioformers_attention"]
    with pytest.raises(KeyError, match=r"bf\.tl\.attention_grn\(adata, model\)"):
        bf.pl.attention(adata, ["gene_1", "gene_2"])


@pytest.mark.parametrize("genes", [["gene_1", "nope_1", "nope_2"], "nope_1"])
def test_unknown_genes_are_named(adata, genes):
    for plot in (bf.pl.attention, bf.pl.predicted_vs_observed):
        with pytest.raises(KeyError, match=r"'nope_1'.*Check `adata\.var_names`"):
            plot(adata, genes)
    with pytest.raises(KeyError, match=r"'nope_1'.*Check `adata\.var_names`"):
        bf.pl.grn(adata, "nope_1")


def test_top_must_be_positive(adata):
    with pytest.raises(ValueError, match="top"):
        bf.pl.attention(adata, "gene_0", top=0)


# --- grn ---------------------------------------------------------------------------------------


def test_grn_draws_the_gene_and_its_top_partners(adata):
    matrix = np.zeros((N_VARS, N_VARS), dtype=np.float32)
    matrix[0, 1:] = np.linspace(0.1, 1.0, N_VARS - 1)  # gene_11 the strongest partner of gene_0
    adata.varp["bioformers_attention"] = matrix
    ax = bf.pl.grn(adata, "gene_0", top=4, show=False)
    assert isinstance(ax, Axes)
    nodes = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(nodes) == 1 and len(nodes[0].get_offsets()) == 5
    labels = {text.get_text() for text in ax.texts}
    assert labels == {"gene_0", "gene_8", "gene_9", "gene_10", "gene_11"}
    edges = next(c for c in ax.collections if isinstance(c, LineCollection))
    assert len(edges.get_segments()) == 4  # partners are unlinked among themselves here
    # width grows linearly with the weight, from 0.5 (the weakest edge) to 4.5 (the strongest)
    weights = matrix[0, 8:]
    expected = 0.5 + 4 * (weights - weights.min()) / (weights.max() - weights.min())
    np.testing.assert_allclose(np.sort(edges.get_linewidths()), expected, rtol=1e-5)
    assert "attention" in ax.get_title()


def test_grn_links_partners_that_are_as_close_as_the_weakest_partner(adata):
    matrix = np.zeros((N_VARS, N_VARS), dtype=np.float32)
    matrix[0, [1, 2, 3]] = [0.9, 0.8, 0.5]
    matrix[2, 1] = 0.6  # above the weakest centre edge (0.5): drawn
    matrix[3, 1] = 0.4  # below it: left out
    adata.varp["bioformers_attention"] = matrix
    ax = bf.pl.grn(adata, "gene_0", top=3, show=False)
    edges = next(c for c in ax.collections if isinstance(c, LineCollection))
    assert len(edges.get_segments()) == 4


def test_grn_default_key_falls_back_to_similarity(adata):
    del adata.varp["bioformers_attention"]
    fig = bf.pl.grn(adata, "gene_0", top=3, return_fig=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert "similarity" in ax.get_title()
    # the block of gene_0 (even genes of 0-7) is the most similar
    assert {text.get_text() for text in ax.texts} == {"gene_0", "gene_2", "gene_4", "gene_6"}
    del adata.varp["bioformers_similarity"]
    with pytest.raises(KeyError, match=r"bf\.tl\.grn.*bf\.tl\.attention_grn.*bf\.tl\.gene_programs"):
        bf.pl.grn(adata, "gene_0")
    with pytest.raises(KeyError, match=r"'other'.*not found"):
        bf.pl.grn(adata, "gene_0", key="other")


def _tl_grn(adata, matrix, groups=None):
    """Write what bf.tl.grn writes (signed knockout GRN), with one group if given."""
    adata.varp["bioformers_grn"] = matrix
    adata.uns["bioformers_grn"] = {"params": {"method": "knockout", "signed": True}}
    for label, group_matrix in (groups or {}).items():
        key = Keys("bioformers").grn_group(label)
        adata.varp[key] = group_matrix
        adata.uns["bioformers_grn"]["groups"] = {"label": [label], "key": [key], "n_cells": [10]}


def test_grn_of_tl_grn_draws_a_regulators_targets_as_signed_arrows(adata):
    matrix = np.zeros((N_VARS, N_VARS), dtype=np.float32)
    matrix[0, [1, 2, 3]] = [0.9, -0.8, 0.1]  # gene_0 raises gene_1, lowers gene_2
    matrix[5, 0] = 5.0  # gene_5 regulates gene_0: a regulator of the centre, not a target
    matrix[1, 2] = -0.85  # between targets, stronger than the weakest target edge: drawn
    _tl_grn(adata, matrix)
    ax = bf.pl.grn(adata, "gene_0", top=2, show=False)  # bf.tl.grn's key comes before attention
    assert {text.get_text() for text in ax.texts} == {"gene_0", "gene_1", "gene_2"}
    assert ax.get_title().splitlines()[0] == "gene_0 and its top 2 targets (knockout, all cells)"
    arrows = [patch for patch in ax.patches if isinstance(patch, FancyArrowPatch)]
    assert len(arrows) == 3  # gene_0 -> gene_1, gene_0 -> gene_2, gene_1 -> gene_2
    colours = sorted(matplotlib.colors.to_hex(arrow.get_edgecolor(), keep_alpha=False) for arrow in arrows)
    assert colours == sorted(matplotlib.colors.to_hex(c) for c in ("tab:red", "tab:blue", "cornflowerblue"))


def test_grn_of_tl_grn_by_group_and_a_row_that_was_not_computed(adata):
    whole = np.zeros((N_VARS, N_VARS), dtype=np.float32)
    whole[0, 1] = 1.0
    in_group = np.zeros((N_VARS, N_VARS), dtype=np.float32)
    in_group[0, 4] = 1.0
    _tl_grn(adata, whole, groups={"B cells": in_group})
    ax = bf.pl.grn(adata, "gene_0", group="B cells", top=1, show=False)
    assert {text.get_text() for text in ax.texts} == {"gene_0", "gene_4"}
    assert "knockout, B cells" in ax.get_title()
    with pytest.raises(ValueError, match=r"gene_3's row .* all zero.*`regulators`.*e\.g\. gene_0"):
        bf.pl.grn(adata, "gene_3", show=False)


# --- gene programs -----------------------------------------------------------------------------


def test_gene_programs_heatmap_is_the_similarity_within_the_program(adata):
    ax = bf.pl.gene_programs(adata, "0", show=False)
    assert isinstance(ax, Axes)
    labels = _tick_labels(ax.yaxis)
    assert sorted(labels) == sorted(_genes(adata, range(8)))
    index = adata.var_names.get_indexer(labels)
    np.testing.assert_array_equal(ax.images[0].get_array(), adata.varp["bioformers_similarity"][np.ix_(index, index)])
    # clustering makes the two planted blocks (even and odd genes) contiguous
    blocks = index % 2
    assert np.count_nonzero(np.diff(blocks)) == 1
    assert "program 0" in ax.get_title()


def test_gene_programs_unknown_or_unassigned_program(adata):
    with pytest.raises(KeyError, match=r"Unknown program '7'.*Available programs: 0, 1"):
        bf.pl.gene_programs(adata, "7")
    with pytest.raises(ValueError, match=r"no program.*0, 1"):
        bf.pl.gene_programs(adata, "unassigned")
    assert isinstance(bf.pl.gene_programs(adata, 1, show=False), Axes)  # the label as a number


def test_gene_programs_missing_names_the_tool(adata):
    del adata.varp["bioformers_similarity"]
    with pytest.raises(KeyError, match=r"bioformers_similarity.*bf\.tl\.gene_programs"):
        bf.pl.gene_programs(adata, "0")
    del adata.var["bioformers_program"]
    with pytest.raises(KeyError, match=r"bioformers_program.*bf\.tl\.gene_programs"):
        bf.pl.gene_programs(adata, "0")


# --- binning -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dense", [False, True])
def test_binning_bars_are_the_bin_counts_including_zeros(adata, dense):
    binned = adata.layers["bioformers_binned"]
    expected = np.bincount(binned.toarray().ravel(), minlength=8)  # n_tokens = 8: empty bins 6, 7 shown
    if dense:
        adata.layers["bioformers_binned"] = binned.toarray()
    ax = bf.pl.binning(adata, show=False)
    np.testing.assert_array_equal([bar.get_height() for bar in ax.patches], expected)
    assert expected[0] > binned.nnz > 0 and expected[-1] == 0
    assert ax.get_yscale() == "log"
    assert ax.get_title().startswith("value binning (exact up to 8")
    assert f"{expected[0] / expected.sum():.1%} of values are 0" in ax.get_title()


def test_binning_linear_segment_and_key_added():
    adata = _fill(bf.datasets.synthetic(n_obs=N_OBS, n_vars=N_VARS), base="run2")
    adata.uns["run2_binned"]["params"] = {"method": "segment", "n_bins": 5}
    fig = bf.pl.binning(adata, key_added="run2", log=False, return_fig=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    assert ax.get_title().startswith("segment binning (5 bins")
    with pytest.raises(KeyError, match=r"bioformers_binned.*bf\.pp\.bin\(adata\)"):
        bf.pl.binning(adata)


# --- predicted vs observed ---------------------------------------------------------------------


def _dense_confusion(observed, predicted):
    n = max(observed.max(), predicted.max()) + 1
    confusion = np.zeros((n, n))
    np.add.at(confusion, (predicted.ravel(), observed.ravel()), 1)
    return confusion


@pytest.mark.parametrize("genes", [None, ["gene_2", "gene_7", "gene_3"]])
def test_predicted_vs_observed_is_the_confusion_of_bins(adata, genes):
    index = slice(None) if genes is None else adata.var_names.get_indexer(genes)
    observed = adata.layers["bioformers_binned"].toarray()[:, index]
    predicted = adata.layers["bioformers_predicted_bins"][:, index]
    confusion = _dense_confusion(observed, predicted)
    ax = bf.pl.predicted_vs_observed(adata, genes, show=False)
    assert isinstance(ax, Axes)
    shown = ax.images[0].get_array()
    with np.errstate(invalid="ignore"):
        shares = confusion / confusion.sum(axis=0)
    np.testing.assert_allclose(shown.filled(np.nan), shares)
    exact = np.mean(observed == predicted)
    expressed = np.mean((observed == predicted)[observed > 0])
    zeros = np.mean(observed == 0)
    first, second = ax.get_title().split("\n")[:2]
    assert first.endswith(f"exact bin for {expressed:.1%} of expressed values")
    assert second == f"all values: {exact:.1%}; predicting 0 everywhere: {zeros:.1%}"
    assert ax.get_xlabel() == "observed bin"


def test_predicted_vs_observed_perfect_prediction_and_key_added():
    adata = _fill(bf.datasets.synthetic(n_obs=N_OBS, n_vars=N_VARS), base="run2")
    adata.layers["run2_predicted_bins"] = adata.layers["run2_binned"].toarray()
    fig = bf.pl.predicted_vs_observed(adata, "gene_4", key_added="run2", return_fig=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    shares = ax.images[0].get_array()
    present = ~np.ma.getmaskarray(shares).all(axis=0)
    np.testing.assert_array_equal(np.diag(shares.filled(0))[present], 1)
    assert ax.get_title().startswith("gene_4: exact bin for 100.0% of expressed values\nall values: 100.0%;")


def test_predicted_vs_observed_missing_names_the_tool(adata):
    del adata.layers["bioformers_predicted_bins"]
    with pytest.raises(KeyError, match=r"bioformers_predicted_bins.*bf\.tl\.predict\(adata, model\)"):
        bf.pl.predicted_vs_observed(adata)
    del adata.layers["bioformers_binned"]
    with pytest.raises(KeyError, match=r"bf\.pp\.bin\(adata\)"):
        bf.pl.predicted_vs_observed(adata)


# --- shared conventions ------------------------------------------------------------------------


PLOTS = {
    "attention": lambda adata, **kw: bf.pl.attention(adata, ["gene_0", "gene_1"], **kw),
    "grn": lambda adata, **kw: bf.pl.grn(adata, "gene_0", top=3, **kw),
    "gene_programs": lambda adata, **kw: bf.pl.gene_programs(adata, "0", **kw),
    "binning": lambda adata, **kw: bf.pl.binning(adata, **kw),
    "predicted_vs_observed": lambda adata, **kw: bf.pl.predicted_vs_observed(adata, **kw),
}


@pytest.mark.parametrize("name", PLOTS)
def test_custom_key_added_given_axes_and_return_fig(name):
    adata = _fill(bf.datasets.synthetic(n_obs=N_OBS, n_vars=N_VARS), base="run2")
    plot = PLOTS[name]
    with pytest.raises(KeyError, match="bioformers_"):
        plot(adata)  # nothing under the default key
    fig, ax = plt.subplots()
    assert plot(adata, key_added="run2", ax=ax, show=False) is ax
    assert plot(adata, key_added="run2", ax=ax, return_fig=True) is fig


@pytest.mark.parametrize("plot", ["attention", "gene_programs", "predicted_vs_observed"])
def test_heatmaps_draw_no_grid_under_scanpys_figure_params(adata, plot):
    # `sc.set_figure_params()` turns on axes.grid, whose lines would cut through every cell.
    with matplotlib.rc_context({"axes.grid": True}):
        if plot == "attention":
            ax = bf.pl.attention(adata, show=False)
        elif plot == "gene_programs":
            ax = bf.pl.gene_programs(adata, "0", show=False)
        else:
            ax = bf.pl.predicted_vs_observed(adata, show=False)
    assert not any(line.get_visible() for line in ax.get_xgridlines() + ax.get_ygridlines())
