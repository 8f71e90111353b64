"""No partial writes: a failure (or Ctrl-C) part-way through any writer leaves the AnnData exactly as it was.

Each test makes an internal step that runs after some of the work fail, with a ``RuntimeError`` or a
``KeyboardInterrupt``, and compares everything the AnnData holds with a snapshot taken before.
"""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc

import bioformers as bf
from bioformers.pp import _binning
from bioformers.tl import _genes

FAILURES = [
    pytest.param(RuntimeError("injected failure"), id="RuntimeError"),
    pytest.param(KeyboardInterrupt(), id="KeyboardInterrupt"),
]


def _fail_with(error):
    def fail(*args, **kwargs):
        raise error

    return fail


def _fail_on_call(number: int, error, original):
    """A stand-in for ``original`` that works ``number - 1`` times, then raises ``error``."""
    calls = []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) >= number:
            raise error
        return original(*args, **kwargs)

    return step


@pytest.fixture
def check_untouched(deep_snapshot, assert_same_anndata):
    """``check_untouched(adata, call, error)``: ``call()`` raises ``error`` and ``adata`` is unchanged."""

    def check(adata, call, error) -> None:
        before = deep_snapshot(adata)
        with pytest.raises(type(error)):
            call()
        assert_same_anndata(before, adata)
        assert not [key for key in adata.uns if key.startswith("_scvi")]

    return check


@pytest.fixture
def query():
    """Raw counts with the training genes, without a binned layer: the tools bin it first."""
    return bf.datasets.synthetic(n_obs=60, n_vars=40, seed=1)


# --- pp.bin ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", FAILURES)
def test_bin_fails_after_binning(counts, monkeypatch, check_untouched, error):
    # the bins are computed; the record of the parameters is the last step before writing
    monkeypatch.setattr(_binning, "params_record", _fail_with(error))
    check_untouched(counts, lambda: bf.pp.bin(counts), error)


# --- tl.pretrain -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", FAILURES)
def test_pretrain_fails_in_training(counts, pretrain_kwargs, monkeypatch, check_untouched, error):
    # by then the counts are binned and registered with scvi-tools, which used to land in `counts`
    monkeypatch.setattr(bf.BioFormer, "train", _fail_with(error))
    check_untouched(counts, lambda: bf.tl.pretrain(counts, batch_key="batch", **pretrain_kwargs), error)


@pytest.mark.parametrize("error", FAILURES)
def test_pretrain_fails_after_training(counts, pretrain_kwargs, monkeypatch, check_untouched, error):
    monkeypatch.setattr(bf.BioFormer, "get_latent_representation", _fail_with(error))
    check_untouched(counts, lambda: bf.tl.pretrain(counts, **(pretrain_kwargs | {"max_epochs": 1})), error)


def test_pretrain_with_a_binned_layer_fails_after_training(counts, pretrain_kwargs, monkeypatch, check_untouched):
    bf.pp.bin(counts)
    error = RuntimeError("injected failure")
    monkeypatch.setattr(bf.BioFormer, "loss_history", _fail_with(error))
    check_untouched(counts, lambda: bf.tl.pretrain(counts, **(pretrain_kwargs | {"max_epochs": 1})), error)


# --- embed, predict, attention_grn: they bin the query first ------------------------------------------------
@pytest.mark.parametrize("error", FAILURES)
def test_embed_fails_after_binning(pretrained, query, monkeypatch, check_untouched, error):
    model, _ = pretrained
    monkeypatch.setattr(bf.BioFormer, "get_latent_representation", _fail_with(error))
    check_untouched(query, lambda: bf.tl.embed(query, model), error)


@pytest.mark.parametrize("error", FAILURES)
def test_predict_fails_after_predicting(pretrained, query, monkeypatch, check_untouched, error):
    model, _ = pretrained
    # called once the predicted bins are computed, to map them back to counts
    monkeypatch.setattr(_genes, "bin_centers", _fail_with(error))
    check_untouched(query, lambda: bf.tl.predict(query, model, mask_ratio=0.5), error)


@pytest.mark.parametrize("error", FAILURES)
def test_attention_grn_fails_between_groups(pretrained, query, monkeypatch, check_untouched, error):
    model, _ = pretrained
    # the overall matrix and the first group's are computed; the second group fails
    step = _fail_on_call(3, error, bf.BioFormer.get_attention)
    monkeypatch.setattr(bf.BioFormer, "get_attention", step)
    check_untouched(query, lambda: bf.tl.attention_grn(query, model, groupby="cell_type"), error)


def test_a_tool_that_succeeds_after_a_failure_writes_everything(pretrained, query, monkeypatch, check_untouched):
    """The failed call left no half-binned layer behind that the next call would trust."""
    model, _ = pretrained
    error = RuntimeError("injected failure")
    with monkeypatch.context() as patch:
        patch.setattr(bf.BioFormer, "get_latent_representation", _fail_with(error))
        check_untouched(query, lambda: bf.tl.embed(query, model), error)
    expected = bf.tl.embed(query, model, copy=True)
    bf.tl.embed(query, model)
    np.testing.assert_array_equal(query.obsm["X_bioformers"], expected.obsm["X_bioformers"])
    assert "bioformers_binned" in query.layers


# --- gene embeddings and programs ------------------------------------------------------------------------
def test_gene_embeddings_fail_before_writing(pretrained, counts, monkeypatch, check_untouched):
    model, _ = pretrained
    error = KeyboardInterrupt()
    monkeypatch.setattr(_genes, "_gene_embedding", _fail_with(error))
    check_untouched(counts, lambda: bf.tl.gene_embeddings(counts, model), error)


@pytest.mark.parametrize("error", FAILURES)
def test_gene_programs_fail_in_clustering(pretrained, counts, monkeypatch, check_untouched, error):
    model, _ = pretrained
    # the embeddings, the similarity and the gene graph are computed; Leiden fails
    monkeypatch.setattr(sc.tl, "leiden", _fail_with(error))
    check_untouched(counts, lambda: bf.tl.gene_programs(counts, model, n_neighbors=5), error)


# --- perturbation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", FAILURES)
def test_train_perturbation_fails_in_training(monkeypatch, check_untouched, error):
    adata = bf.datasets.synthetic_perturbation(n_obs=300, n_vars=24, n_programs=2, n_unmeasured=1)
    # the split, the bins, the DE weights and the registration are done; fine-tuning fails
    monkeypatch.setattr(bf.BioFormer, "train_perturbation", _fail_with(error))

    def call():
        bf.tl.train_perturbation(
            adata, perturbation_key="perturbation", n_hidden=16, n_layers=1, max_epochs=1, batch_size=32
        )

    check_untouched(adata, call, error)


# --- pl.embedding ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", FAILURES)
def test_embedding_plot_fails_in_umap(counts, monkeypatch, check_untouched, error):
    counts.obsm["X_bioformers"] = np.random.default_rng(0).normal(size=(counts.n_obs, 8)).astype(np.float32)
    # the neighbour graph is computed; the UMAP fails
    monkeypatch.setattr(sc.tl, "umap", _fail_with(error))
    check_untouched(counts, lambda: bf.pl.embedding(counts, color="cell_type", show=False), error)
