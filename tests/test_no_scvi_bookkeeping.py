"""scvi-tools registers an AnnData by writing into it; no public call but ``setup_anndata`` may leave that behind."""

from __future__ import annotations

import numpy as np

import bioformers as bf


def scvi_keys(adata) -> list[str]:
    """Every ``_scvi_*`` entry of ``obs``, ``obsm`` and ``uns``."""
    return [key for part in (adata.obs, adata.obsm, adata.uns) for key in part if str(key).startswith("_scvi")]


def test_load_with_the_training_data_leaves_it_clean(pretrained, tmp_path):
    model, adata = pretrained
    model.save(str(tmp_path / "model"))
    user = adata.copy()
    assert not scvi_keys(user)
    loaded = bf.BioFormer.load(str(tmp_path / "model"), adata=user)
    assert not scvi_keys(user)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    assert loaded.adata.X is user.X, "the model's data shares the caller's matrices, no copy"
    assert not scvi_keys(user)


def test_model_methods_on_a_query_leave_it_clean(pretrained, counts):
    model, _ = pretrained
    query = counts[:40].copy()
    bf.pp.bin(query)
    model.get_latent_representation(query)
    model.get_predicted_bins(query)
    model.get_attention(query, indices=range(10))
    assert not scvi_keys(query)


def test_diffusion_leaves_a_query_clean(counts):
    adata = counts.copy()
    bf.CellDiffusion.setup_anndata(adata, categorical_covariate_keys=["cell_type"])
    model = bf.CellDiffusion(adata, n_tokens=2, token_dim=4, n_hidden=16, n_layers=1, n_encoder_hidden=16)
    model.train(max_epochs=1, autoencoder_epochs=1, batch_size=50, enable_progress_bar=False)
    query = counts[:30].copy()
    assert model.get_latent_representation(query).shape == (30, 8)
    assert not scvi_keys(query)
