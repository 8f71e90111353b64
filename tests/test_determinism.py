"""Same input, same answer (issue 6, part 5).

Training: with a fixed seed, training twice on the CPU gives bit-identical weights, loss history and
embeddings, through ``bf.tl.pretrain(seed=...)``, ``BioFormer.train`` after ``scvi.settings.seed``
and ``bf.tl.train_perturbation(seed=...)``; another seed gives another model.

Inference: a cell's embedding and predicted bins (with and without ``mask_ratio``) are the same
whatever the batch size, the other cells of its batch, their order, or the subset it is part of.
Exact resume after an interruption is tested in ``test_training_robustness.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scvi
import torch

import bioformers as bf


def assert_same_weights(model, other):
    state, expected = model.module.state_dict(), other.module.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


def assert_same_history(model, other):
    assert model.history_.keys() == other.history_.keys()
    for name, frame in other.history_.items():
        pd.testing.assert_frame_equal(model.history_[name], frame)


# --- training -----------------------------------------------------------------------------------
def test_pretrain_with_the_same_seed_is_bit_identical(pretrained, counts, pretrain_kwargs):
    model, adata = pretrained
    again = bf.tl.pretrain(counts, **pretrain_kwargs)
    np.testing.assert_array_equal(counts.obsm["X_bioformers"], adata.obsm["X_bioformers"])
    assert_same_weights(again, model)
    assert_same_history(again, model)
    assert counts.uns["bioformers"]["history"] == adata.uns["bioformers"]["history"]


def test_pretrain_with_another_seed_differs(pretrained, counts, pretrain_kwargs):
    _, adata = pretrained
    bf.tl.pretrain(counts, **(pretrain_kwargs | {"seed": 1}))
    assert counts.uns["bioformers"]["params"]["seed"] == 1
    assert not np.allclose(counts.obsm["X_bioformers"], adata.obsm["X_bioformers"])


def _train_after_seed(counts, tiny_model, seed):
    """``BioFormer.train`` on a fresh model, after consuming random numbers and then seeding scvi-tools."""
    torch.rand(7), np.random.rand(3)  # state left over from earlier work must not matter
    adata = counts.copy()
    bf.pp.bin(adata)
    scvi.settings.seed = seed
    bf.BioFormer.setup_anndata(adata)
    model = bf.BioFormer(adata, **tiny_model)
    model.train(max_epochs=1, batch_size=32, lr=3e-3, enable_progress_bar=False, accelerator="cpu")
    return model


def test_model_train_after_scvi_seed_is_bit_identical(counts, tiny_model):
    first, second = (_train_after_seed(counts, tiny_model, seed=0) for _ in range(2))
    assert_same_weights(first, second)
    assert_same_history(first, second)
    np.testing.assert_array_equal(first.get_latent_representation(), second.get_latent_representation())
    other = _train_after_seed(counts, tiny_model, seed=1)
    assert not torch.equal(other.module.gene_embedding.weight, first.module.gene_embedding.weight)


PERTURBATION = {
    "perturbation_key": "perturbation",
    "n_hidden": 16,
    "n_layers": 1,
    "n_heads": 2,
    "max_epochs": 1,
    "batch_size": 32,
    "enable_progress_bar": False,
    "accelerator": "cpu",
}


def test_train_perturbation_with_the_same_seed_is_bit_identical():
    screen = bf.datasets.synthetic_perturbation(n_obs=300, n_vars=24, n_programs=2, n_unmeasured=1)
    first, second, other = (bf.tl.train_perturbation(screen.copy(), **PERTURBATION, seed=seed) for seed in (5, 5, 6))
    assert_same_weights(first, second)
    assert_same_history(first, second)
    assert first.perturbation_ == second.perturbation_
    assert not torch.equal(other.module.gene_embedding.weight, first.module.gene_embedding.weight)


# --- inference ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def latent(trained):
    model, _ = trained
    return model.get_latent_representation()


@pytest.fixture(scope="module", params=[None, 0.25], ids=["decoded", "masked"])
def predicted(trained, request):
    """``(mask_ratio, expected bins, most likely bins)`` of every training cell, one batch of 128 at a time."""
    model, _ = trained
    return (request.param, *model.get_predicted_bins(mask_ratio=request.param))


def test_latent_is_repeatable(trained, latent):
    model, _ = trained
    np.testing.assert_array_equal(model.get_latent_representation(), latent)


# batches of one cell run on the first cells only, to save time
FIRST = np.arange(24)


@pytest.mark.parametrize("batch_size", [1, 7, 200])
def test_latent_does_not_depend_on_batch_size(trained, latent, batch_size):
    model, _ = trained
    cells = FIRST if batch_size == 1 else np.arange(latent.shape[0])
    np.testing.assert_array_equal(model.get_latent_representation(indices=cells, batch_size=batch_size), latent[cells])


def test_latent_of_subset_equals_rows_of_full(trained, latent):
    model, adata = trained
    indices = np.array([150, 3, 77, 4, 199, 0])
    np.testing.assert_array_equal(model.get_latent_representation(indices=indices), latent[indices])
    np.testing.assert_array_equal(model.get_latent_representation(adata[indices].copy()), latent[indices])


def test_latent_of_reversed_cells_equals_reversed_rows(trained, latent):
    model, adata = trained
    reversed_cells = adata[::-1].copy()
    np.testing.assert_array_equal(model.get_latent_representation(reversed_cells, batch_size=32), latent[::-1])


def test_latent_of_shuffled_cells_in_other_company(trained, latent):
    model, adata = trained
    order = np.random.default_rng(0).permutation(adata.n_obs)
    np.testing.assert_array_equal(model.get_latent_representation(adata[order].copy(), batch_size=13), latent[order])
    # one cell: alone, twice in one batch, and among other cells
    cell = 42
    company = np.r_[cell, cell, np.arange(100, 120)]
    np.testing.assert_array_equal(model.get_latent_representation(indices=[cell])[0], latent[cell])
    np.testing.assert_array_equal(model.get_latent_representation(indices=company)[:2], latent[[cell, cell]])


@pytest.mark.parametrize("batch_size", [1, 7, 200])
def test_predicted_bins_do_not_depend_on_batch_size(trained, predicted, batch_size):
    model, _ = trained
    mask_ratio, expected, best = predicted
    cells = FIRST if batch_size == 1 else np.arange(expected.shape[0])
    again = model.get_predicted_bins(indices=cells, mask_ratio=mask_ratio, batch_size=batch_size)
    np.testing.assert_array_equal(again[0], expected[cells])
    np.testing.assert_array_equal(again[1], best[cells])


def test_predicted_bins_of_shuffled_and_subset_cells_equal_rows_of_full(trained, predicted):
    model, adata = trained
    mask_ratio, expected, best = predicted
    order = np.random.default_rng(1).permutation(adata.n_obs)
    shuffled = model.get_predicted_bins(adata[order].copy(), mask_ratio=mask_ratio, batch_size=17)
    np.testing.assert_array_equal(shuffled[0], expected[order])
    np.testing.assert_array_equal(shuffled[1], best[order])
    indices = np.array([150, 3, 77, 4, 199, 0, 3])
    subset = model.get_predicted_bins(indices=indices, mask_ratio=mask_ratio)
    np.testing.assert_array_equal(subset[0], expected[indices])
    np.testing.assert_array_equal(subset[1], best[indices])
