import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

import bioformers as bf

GENES = [f"g{j}" for j in range(6)]
CONTROL = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
DELTA_A = np.array([1.0, -2.0, 0.5, 0.0, 0.1, -0.1])
DELTA_B = np.array([-1.0, 0.0, 0.0, 2.0, 0.0, 0.0])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def observed():
    """Two cells per group around the group mean: control, A and B with known deltas."""
    spread = np.array([[-0.05] * 6, [0.05] * 6])
    X = np.vstack([CONTROL + spread, CONTROL + DELTA_A + spread, CONTROL + DELTA_B + spread])
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical(np.repeat(["control", "A", "B"], 2), categories=["control", "A", "B"])},
        index=[f"c{i}" for i in range(6)],
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES))


@pytest.fixture
def predicted():
    return pd.DataFrame(
        [CONTROL + 0.5 * DELTA_A + np.array([0, 0, 0, 0.3, 0, 0]), CONTROL], index=["A", "B"], columns=GENES
    )


def _bars(ax):
    """Observed and predicted bar widths, in the order of the genes."""
    bars = ax.containers
    return np.array([p.get_width() for p in bars[0]]), np.array([p.get_width() for p in bars[1]])


# --- one perturbation --------------------------------------------------------------------------


def test_perturbation_bars_are_the_deltas_of_the_chosen_genes(observed, predicted):
    genes = ["g3", "g0", "g1"]
    ax = bf.pl.perturbation(predicted, observed, "A", genes=genes, show=False)
    assert isinstance(ax, Axes)
    observed_width, predicted_width = _bars(ax)
    index = [3, 0, 1]
    np.testing.assert_allclose(observed_width, DELTA_A[index], atol=1e-12)
    predicted_delta = (predicted.loc["A"].to_numpy() - CONTROL)[index]
    np.testing.assert_allclose(predicted_width, predicted_delta, atol=1e-12)
    assert [label.get_text() for label in ax.get_yticklabels()] == genes
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first gene on top
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["observed", "predicted"]
    corr = np.corrcoef(predicted_delta, DELTA_A[index])[0, 1]
    assert ax.get_title() == f"A (3 genes): corr(Δ) = {corr:.2f}"


def test_perturbation_default_genes_are_the_top_de_genes(observed, predicted):
    top = bf.metrics.top_de_genes(observed, perturbations=["A"], n_top_genes=4)["A"]
    ax = bf.pl.perturbation(predicted, observed, "A", n_top_genes=4, show=False)
    assert [label.get_text() for label in ax.get_yticklabels()] == top
    assert ax.get_title().startswith("A (top 4 DE genes): corr(Δ) = ")
    # the largest observed change comes first
    assert top[0] == "g1"


def test_perturbation_reads_predicted_cells(observed, predicted):
    cells = np.repeat(predicted.to_numpy()[:, ::-1], 3, axis=0) + np.tile([[-0.1], [0.0], [0.1]], (2, 1))
    adata = ad.AnnData(
        X=cells,
        obs=pd.DataFrame({"perturbation": np.repeat(["A", "B"], 3)}, index=[f"p{i}" for i in range(6)]),
        var=pd.DataFrame(index=GENES[::-1]),
    )
    from_cells = bf.pl.perturbation(adata, observed, "A", genes=GENES, show=False)
    from_means = bf.pl.perturbation(predicted, observed, "A", genes=GENES, show=False)
    np.testing.assert_allclose(_bars(from_cells)[1], _bars(from_means)[1], atol=1e-12)


def test_perturbation_constant_and_missing_predictions(observed, predicted):
    ax = bf.pl.perturbation(predicted, observed, "B", genes=GENES, show=False)
    assert ax.get_title() == "B (6 genes): corr(Δ) undefined, a constant change"
    np.testing.assert_allclose(_bars(ax)[1], 0.0)
    predicted.loc["B"] = np.nan
    ax = bf.pl.perturbation(predicted, observed, "B", genes="g0", show=False)
    assert ax.get_title() == "B (1 gene): no prediction (NaN)"


def test_perturbation_errors(observed, predicted):
    with pytest.raises(ValueError, match=r"no prediction for 'B'; it predicts 'A'"):
        bf.pl.perturbation(predicted.loc[["A"]], observed, "B")
    with pytest.raises(ValueError, match=r"'C'.*Known perturbations: 'A', 'B'"):
        bf.pl.perturbation(predicted, observed, "C")
    with pytest.raises(KeyError, match=r"'nope'.*Check `adata\.var_names`"):
        bf.pl.perturbation(predicted, observed, "A", genes=["g0", "nope"])
    with pytest.raises(ValueError, match="missing from `predicted`: 'g5'"):
        bf.pl.perturbation(predicted.drop(columns="g5"), observed, "A")
    with pytest.raises(ValueError, match="n_top_genes"):
        bf.pl.perturbation(predicted, observed, "A", n_top_genes=0)


# --- scores per method -------------------------------------------------------------------------


@pytest.fixture
def scores():
    return pd.DataFrame(
        {
            "method": ["linear", "linear", "linear", "no_change", "no_change", "no_change", "mlp", "mlp", "mlp"],
            "perturbation": ["A", "B", "C"] * 3,
            "pearson_delta": [0.9, 0.5, np.nan, np.nan, np.nan, np.nan, -0.2, 0.4, 0.1],
            "mse_top": [0.1, 0.3, 0.2, 1.0, 1.2, 0.8, 0.5, 0.4, 0.6],
        }
    )


def _method_bars(ax):
    return [container for container in ax.containers if isinstance(container, BarContainer)]


def _points(ax):
    return np.vstack(
        [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    )


def test_scores_bars_are_means_with_sd_and_points_per_row(scores):
    ax = bf.pl.perturbation_scores(scores, show=False)
    assert [label.get_text() for label in ax.get_xticklabels()] == ["linear", "no_change", "mlp"]  # as they appear
    bars = _method_bars(ax)
    heights = [bar.patches[0].get_height() for bar in bars]
    np.testing.assert_allclose(heights, [0.7, np.nan, 0.1])
    error = bars[0].errorbar.lines[2][0].get_segments()[0]
    np.testing.assert_allclose(error[:, 1], [0.7 - np.std([0.9, 0.5], ddof=1), 0.7 + np.std([0.9, 0.5], ddof=1)])
    points = _points(ax)
    assert len(points) == 5  # the finite rows
    np.testing.assert_allclose(np.sort(points[:, 1]), np.sort([0.9, 0.5, -0.2, 0.4, 0.1]))
    assert "n/a" in [text.get_text() for text in ax.texts]
    assert any(np.allclose(line.get_ydata(), 0) for line in ax.get_lines())  # negative values: a zero line
    assert ax.get_ylabel() == "pearson_delta"


def test_scores_method_index_split_colours_and_another_metric(scores):
    scores["split"] = ["seen", "unseen", "seen"] * 3
    table = scores.set_index(["method", "perturbation"])  # as pd.concat({...}, names=["method"]) gives
    fig = bf.pl.perturbation_scores(table, metric="mse_top", return_fig=True)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    np.testing.assert_allclose([bar.patches[0].get_height() for bar in _method_bars(ax)], [0.2, 1.0, 0.5])
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["seen", "unseen"]
    assert not any(np.allclose(line.get_ydata(), 0) for line in ax.get_lines())


def test_scores_errors(scores):
    with pytest.raises(KeyError, match=r"Metric 'pearson'.*Available: 'pearson_delta', 'mse_top'"):
        bf.pl.perturbation_scores(scores, metric="pearson")
    with pytest.raises(KeyError, match="no `method` column"):
        bf.pl.perturbation_scores(scores.drop(columns="method"))


# --- shared conventions ------------------------------------------------------------------------


@pytest.mark.parametrize("plot", ["perturbation", "perturbation_scores"])
def test_given_axes_and_return_fig(plot, observed, predicted, scores):
    def call(**kwargs):
        if plot == "perturbation":
            return bf.pl.perturbation(predicted, observed, "A", genes=GENES[:3], **kwargs)
        return bf.pl.perturbation_scores(scores, **kwargs)

    fig, ax = plt.subplots()
    assert call(ax=ax, show=False) is ax
    assert call(ax=ax, return_fig=True) is fig
