import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import scanpy as sc
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import bioformers as bf

HISTORY = {"train_loss": [3.0, 2.0, 1.5, 1.2], "validation_loss": [3.1, 2.4, 2.0, 1.9]}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def adata():
    adata = bf.datasets.synthetic(n_obs=90, n_vars=20)
    # stands in for bf.tl.pretrain: one direction per cell type plus noise
    rng = np.random.default_rng(0)
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    adata.obsm["X_bioformers"] = np.eye(8)[codes] * 5 + rng.normal(size=(adata.n_obs, 8))
    return adata


def test_embedding_returns_axes_and_keeps_users_umap(adata):
    users_umap = np.ones((adata.n_obs, 2))
    adata.obsm["X_umap"] = users_umap.copy()
    ax = bf.pl.embedding(adata, color="cell_type", show=False)
    assert isinstance(ax, Axes)
    assert adata.obsm["X_umap_bioformers"].shape == (adata.n_obs, 2)
    assert "bioformers_neighbors_connectivities" in adata.obsp
    assert adata.uns["bioformers_neighbors"]["params"]["use_rep"] == "X_bioformers"
    np.testing.assert_array_equal(adata.obsm["X_umap"], users_umap)
    assert "neighbors" not in adata.uns and "umap" not in adata.uns
    assert "connectivities" not in adata.obsp


def test_embedding_writes_no_plain_umap(adata):
    bf.pl.embedding(adata, show=False)
    assert "X_umap" not in adata.obsm


def test_embedding_reuses_umap_of_the_same_embedding(adata, monkeypatch):
    bf.pl.embedding(adata, show=False)
    first = adata.obsm["X_umap_bioformers"].copy()

    def fail(*args, **kwargs):
        raise AssertionError("UMAP recomputed although the embedding did not change")

    monkeypatch.setattr(sc.tl, "umap", fail)
    bf.pl.embedding(adata, color="batch", show=False)
    np.testing.assert_array_equal(adata.obsm["X_umap_bioformers"], first)


def test_embedding_reuses_umap_after_h5ad_round_trip(adata, tmp_path, monkeypatch):
    bf.pl.embedding(adata, show=False)
    adata.write_h5ad(tmp_path / "a.h5ad")
    adata = sc.read_h5ad(tmp_path / "a.h5ad")
    monkeypatch.setattr(sc.tl, "umap", lambda *a, **k: pytest.fail("UMAP recomputed after reading back"))
    assert isinstance(bf.pl.embedding(adata, color="cell_type", show=False), Axes)


def test_embedding_recomputes_after_retraining(adata):
    bf.pl.embedding(adata, show=False)
    first = adata.obsm["X_umap_bioformers"].copy()
    checksum = adata.uns["X_umap_bioformers"]["params"]["rep_checksum"]
    adata.obsm["X_bioformers"] = np.random.default_rng(1).normal(size=(adata.n_obs, 8))  # a "retrained" embedding
    bf.pl.embedding(adata, show=False)
    assert adata.uns["X_umap_bioformers"]["params"]["rep_checksum"] != checksum
    assert not np.array_equal(adata.obsm["X_umap_bioformers"], first)


def test_embedding_key_added_and_return_fig(adata):
    adata.obsm["X_run2"] = adata.obsm.pop("X_bioformers")
    fig = bf.pl.embedding(adata, color="cell_type", key_added="run2", return_fig=True)
    assert isinstance(fig, Figure)
    assert "X_umap_run2" in adata.obsm
    assert "X_umap_bioformers" not in adata.obsm


def test_embedding_draws_into_given_axes(adata):
    _, ax = plt.subplots()
    assert bf.pl.embedding(adata, color="cell_type", ax=ax, show=False) is ax


def test_embedding_missing_basis_names_the_tool(adata):
    del adata.obsm["X_bioformers"]
    with pytest.raises(KeyError, match=r"bf\.tl\.pretrain\(adata\)"):
        bf.pl.embedding(adata, color="cell_type")


def test_history_from_adata(adata):
    adata.uns["bioformers"] = {"params": {}, "history": HISTORY}
    ax = bf.pl.history(adata, show=False)
    assert isinstance(ax, Axes)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["train", "validation"]
    np.testing.assert_array_equal(lines[0].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(lines[1].get_ydata(), HISTORY["validation_loss"])
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "loss"
    assert ax.get_legend() is not None


def test_history_after_h5ad_round_trip(adata, tmp_path):
    adata.uns["bioformers"] = {"history": HISTORY}
    adata.write_h5ad(tmp_path / "a.h5ad")
    ax = bf.pl.history(sc.read_h5ad(tmp_path / "a.h5ad"), show=False)
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), HISTORY["train_loss"])


def test_history_from_model_without_validation():
    class FakeModel:
        def loss_history(self):
            return {"train_loss": [2.0, 1.0], "validation_loss": []}

    _, ax = plt.subplots()
    fig = bf.pl.history(FakeModel(), ax=ax, return_fig=True)
    assert fig is ax.figure
    assert [line.get_label() for line in ax.get_lines()] == ["train"]


def test_history_missing_record_names_the_tool(adata):
    with pytest.raises(KeyError, match=r"bf\.tl\.pretrain"):
        bf.pl.history(adata)
    adata.uns["run2"] = {"history": HISTORY}
    with pytest.raises(KeyError, match=r"uns\['bioformers'\]"):
        bf.pl.history(adata)
    assert isinstance(bf.pl.history(adata, key_added="run2", show=False), Axes)
