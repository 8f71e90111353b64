"""One model class per network, composed from shared mixins: what each class has, and what they share."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bioformers as bf
from bioformers.model.base import SaveLoadMixin
from bioformers.module import BioFormerModule, BioFormerPerturbationModule


def test_each_network_has_its_own_class(pretrained):
    encoder, _ = pretrained
    assert type(encoder) is bf.BioFormer and type(encoder.module) is BioFormerModule
    assert not hasattr(encoder, "generate"), "generation belongs to the decoder"
    assert not hasattr(bf.BioFormerDecoder, "get_attention"), "attention maps belong to the encoder"
    with pytest.raises(TypeError, match="architecture"):
        bf.BioFormer(encoder.adata, architecture="decoder")


def test_perturbation_network_extends_the_pretraining_one():
    """Every parameter of the pretraining network keeps its name, so pretrained weights load unchanged."""
    plain = BioFormerModule(30, 10, n_hidden=16, n_layers=1, max_seq_len=16)
    perturbation = BioFormerPerturbationModule(30, 10, n_hidden=16, n_layers=1, max_seq_len=16)
    assert set(plain.state_dict()) < set(perturbation.state_dict())
    assert {"external_embedding.weight", "control_mean"} <= set(perturbation.state_dict()) - set(plain.state_dict())
    with pytest.raises(ValueError, match="no external tokens"):
        plain.external_tokens(torch.zeros(2, 3, dtype=torch.long))


def test_encoder_samples_only_the_masked_genes():
    module = BioFormerModule(30, 10, n_hidden=16, n_layers=1, max_seq_len=32).eval()
    bins = torch.randint(0, 10, (6, 30))
    mask = torch.zeros(6, 30, dtype=torch.bool)
    mask[:, :5] = True
    first = module.sample(bins, mask, generator=torch.Generator().manual_seed(0))
    again = module.sample(bins, mask, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first[:, 5:], bins[:, 5:])
    assert first.min() >= 0 and first.max() < 10
    draws = torch.stack([module.sample(bins, mask, generator=torch.Generator().manual_seed(s)) for s in range(5)])
    assert (draws[:, :, :5] != draws[:1, :, :5]).any(), "masked genes are drawn, not fixed"


def test_new_decoder_directory_opens_with_either_class(tmp_path):
    adata = bf.datasets.synthetic(n_obs=64, n_vars=20, seed=2)
    model = bf.tl.pretrain(
        adata, architecture="decoder", n_layers=1, n_hidden=16, max_epochs=1, batch_size=32, enable_progress_bar=False
    )
    assert type(model) is bf.BioFormerDecoder
    path = tmp_path / "decoder"
    model.save(str(path), save_anndata=True)
    saved = json.loads((path / "model.json").read_text())
    assert saved["model_class"] == "BioFormerDecoder" and "architecture" not in saved["init_params"]["non_kwargs"]
    for cls in (bf.BioFormer, bf.BioFormerDecoder):
        loaded = cls.load(str(path))
        assert type(loaded) is bf.BioFormerDecoder
        np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    with pytest.raises(ValueError, match="holds a BioFormerDecoder, not a CellDiffusion"):
        bf.CellDiffusion.load(str(path))


@pytest.mark.parametrize("name", ["BioFormer", "CellDiffusion"])
def test_only_global_rank_zero_saves(name, pretrained, tmp_path, monkeypatch):
    """Every model class shares one `save`, with the guard that keeps other processes of a DDP run from writing."""
    if name == "BioFormer":
        model = pretrained[0]
    else:
        adata = bf.datasets.synthetic(n_obs=64, n_vars=20)
        bf.CellDiffusion.setup_anndata(adata)
        model = bf.CellDiffusion(adata, n_tokens=2, token_dim=4, n_hidden=16, n_layers=1, n_encoder_hidden=16)
    assert type(model).save is SaveLoadMixin.save
    monkeypatch.setattr(type(model), "is_global_zero", property(lambda self: False))
    model.save(str(tmp_path / "model"))
    assert not (tmp_path / "model").exists()


def test_prepare_query_forgets_its_private_anndata(pretrained, counts):
    model, _ = pretrained
    before = len(model._per_instance_manager_store.get(model.id, {}))
    with model.prepare_query(counts) as query:
        assert query.adata is not counts and "bioformers_binned" in query.adata.layers
        assert len(list(query.batches(range(8), batch_size=4))) == 2
    assert len(model._per_instance_manager_store.get(model.id, {})) == before, "no AnnData stays registered"
    assert "bioformers_binned" not in counts.layers and not any(k.startswith("_scvi") for k in counts.uns)
    query.write_binning(counts)
    assert "bioformers_binned" in counts.layers
