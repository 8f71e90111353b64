"""Batch tokens of the encoder: the output heads read them, the cell embedding does not depend on them."""

import numpy as np
import pytest
import torch
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import bioformers as bf

SHIFTED = np.arange(0, 40, 2)  # genes 4x higher in batch_1


def _batch_shifted(seed=0):
    adata = bf.datasets.synthetic(n_obs=320, n_vars=40, n_cell_types=2, n_batches=2, seed=seed)
    X = adata.X.toarray()
    in_batch_1 = (adata.obs["batch"] == "batch_1").to_numpy()
    X[np.ix_(in_batch_1, SHIFTED)] *= 4
    adata.X = type(adata.X)(X)
    return adata


def _train(adata, **kwargs):
    return bf.tl.pretrain(
        adata, n_layers=1, n_hidden=16, max_epochs=25, batch_size=32, lr=3e-3, enable_progress_bar=False, **kwargs
    )


@pytest.fixture(scope="module")
def with_and_without():
    plain, corrected = _batch_shifted(), _batch_shifted()
    return plain, _train(plain), corrected, _train(corrected, batch_key="batch")


def _batch_accuracy(adata):
    """How well the batch can be read off the embedding (5-fold kNN accuracy; 0.5 is chance)."""
    knn = KNeighborsClassifier(n_neighbors=15)
    return cross_val_score(knn, adata.obsm["X_bioformers"], adata.obs["batch"], cv=5).mean()


def test_batch_token_and_adversary_take_the_batch_out_of_the_embedding(with_and_without):
    plain, _, corrected, _ = with_and_without
    before, after = _batch_accuracy(plain), _batch_accuracy(corrected)
    assert before > 0.9, before  # the planted batch effect dominates an uncorrected embedding
    assert after < before - 0.04, (before, after)  # measured 0.975 -> 0.89
    # the cell types stay apart
    cell_types = cross_val_score(
        KNeighborsClassifier(n_neighbors=15), corrected.obsm["X_bioformers"], corrected.obs["cell_type"], cv=5
    ).mean()
    assert cell_types > 0.9, cell_types


def test_the_batch_token_carries_the_planted_batch_effect(with_and_without):
    *_, model = with_and_without
    module = model.module.eval()
    with torch.no_grad():
        cls = torch.zeros(2, module.expression_head.in_features - 1 - module.batch_embedding.embedding_dim)
        depth = torch.ones(2)
        decoded = module.decode_expression(cls, depth, module.batch_token(torch.tensor([0, 1]), 2, torch.float32))
    effect = (decoded[1] - decoded[0]).numpy()
    shifted = np.zeros(40, dtype=bool)
    shifted[SHIFTED] = True
    # batch_1 raises exactly the planted genes
    assert effect[shifted].mean() > effect[~shifted].mean() + 0.2, effect  # measured 0.39


def test_embedding_does_not_need_the_batch(with_and_without):
    _, _, corrected, model = with_and_without
    query = corrected.copy()
    del query.obsm["X_bioformers"]
    query.obs["batch"] = "a technology the model never saw"
    bf.tl.embed(query, model)
    np.testing.assert_array_equal(query.obsm["X_bioformers"], corrected.obsm["X_bioformers"])
    del query.obs["batch"], query.obsm["X_bioformers"]
    bf.tl.embed(query, model)
    np.testing.assert_array_equal(query.obsm["X_bioformers"], corrected.obsm["X_bioformers"])


def test_adversary_is_optional_and_recorded(with_and_without):
    _, _, corrected, model = with_and_without
    assert model.module.batch_classifier is not None
    assert corrected.uns["bioformers"]["params"]["batch_adversarial_weight"] == 3.0
    assert "batch_loss_train" in model.history_
    adata = bf.datasets.synthetic(n_obs=64, n_vars=20)
    token_only = bf.tl.pretrain(
        adata,
        batch_key="batch",
        batch_adversarial_weight=0.0,
        n_layers=1,
        n_hidden=16,
        max_epochs=1,
        batch_size=32,
        enable_progress_bar=False,
    )
    assert token_only.module.batch_embedding is not None and token_only.module.batch_classifier is None


def test_negative_adversarial_weight_is_refused():
    adata = bf.datasets.synthetic(n_obs=64, n_vars=20)
    with pytest.raises(ValueError, match="`batch_adversarial_weight` must be >= 0"):
        bf.tl.pretrain(adata, batch_key="batch", batch_adversarial_weight=-1.0)
    assert "bioformers_binned" not in adata.layers
