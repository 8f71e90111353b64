import contextlib
import json
import os
import pickle

import numpy as np
import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from safetensors import safe_open

import bioformers as bf
from bioformers.nn import TransformerEncoder


@pytest.fixture
def binned(counts):
    """Fresh binned counts, not yet registered with scvi-tools."""
    bf.pp.bin(counts)
    return counts


# --- training -----------------------------------------------------------------------------------
def test_training_loss_is_finite_and_decreases(trained):
    model, _ = trained
    history = model.loss_history()
    train, validation = history["train_loss"], history["validation_loss"]
    assert len(train) == 4
    assert all(isinstance(v, float) for v in train + validation)
    assert np.isfinite(train).all()
    assert train[-1] < train[0]
    assert len(validation) == len(train)
    assert np.isfinite(validation).all()


def test_train_passes_accelerator_and_devices_to_lightning(trained):
    model, _ = trained
    assert model.is_trained_
    assert isinstance(model.trainer.accelerator, CPUAccelerator)
    assert model.trainer.num_devices == 1


def test_train_options_reach_the_transformer(binned, tiny_model, monkeypatch):
    compiled = []
    monkeypatch.setattr(TransformerEncoder, "compile", lambda self: compiled.append(self))
    bf.BioFormer.setup_anndata(binned)
    model = bf.BioFormer(binned, **tiny_model)
    block_runs = []
    model.module.encoder.blocks[0].register_forward_pre_hook(lambda *args: block_runs.append(1))
    model.train(
        max_epochs=1, batch_size=50, activation_checkpointing=True, compile=True, train_size=1.0, accelerator="cpu"
    )
    assert compiled == [model.module.encoder]
    n_steps = -(-binned.n_obs // 50)
    assert len(block_runs) == 2 * n_steps  # each block recomputed in the backward pass


def test_train_with_fewer_cells_than_one_batch_raises(binned, tiny_model):
    small = binned[:20].copy()
    bf.BioFormer.setup_anndata(small)
    model = bf.BioFormer(small, **tiny_model)
    with pytest.raises(ValueError, match="batch"):
        model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    assert not model.is_trained_


# --- setup_anndata ------------------------------------------------------------------------------
def test_setup_without_binned_layer_names_pp_bin(counts):
    with pytest.raises(KeyError, match=r"bf\.pp\.bin"):
        bf.BioFormer.setup_anndata(counts)


def test_setup_with_unbinned_layer_names_pp_bin(counts):
    counts.layers["logged"] = np.log1p(counts.X.toarray())
    with pytest.raises(ValueError, match=r"bf\.pp\.bin"):
        bf.BioFormer.setup_anndata(counts, layer="logged")


def test_setup_with_missing_batch_key_raises(binned):
    with pytest.raises(KeyError, match="no_such_column"):
        bf.BioFormer.setup_anndata(binned, batch_key="no_such_column")


def test_setup_with_duplicate_var_names_raises(binned):
    binned.var_names = ["gene_0"] * 2 + binned.var_names[2:].tolist()
    with pytest.raises(ValueError, match="unique"):
        bf.BioFormer.setup_anndata(binned)


# --- embeddings ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def latent(trained):
    model, _ = trained
    return model.get_latent_representation()


def test_latent_shape_and_dtype(trained, latent, tiny_model):
    _, adata = trained
    assert latent.shape == (adata.n_obs, tiny_model["n_hidden"])
    assert latent.dtype == np.float32
    assert np.isfinite(latent).all()
    # not collapsed: cells get different embeddings
    assert np.unique(latent.round(4), axis=0).shape[0] > adata.n_obs // 2


# repeatability and independence from batch size and company: tests/test_determinism.py


def test_latent_matches_genes_by_name_not_position(trained, latent):
    model, adata = trained
    np.testing.assert_array_equal(model.get_latent_representation(adata[:, ::-1].copy()), latent)
    renamed = adata.copy()
    renamed.var_names = [f"renamed_{i}" for i in range(renamed.n_vars)]
    with pytest.raises(ValueError, match="Only 0 of the model's 40 genes"):
        model.get_latent_representation(renamed)


# --- save / load --------------------------------------------------------------------------------
def test_save_writes_only_safetensors_and_json(saved):
    assert sorted(os.listdir(saved)) == ["model.json", "model.safetensors"]
    with open(saved / "model.json") as f:
        json.load(f)
    with safe_open(str(saved / "model.safetensors"), framework="pt") as f:
        assert len(list(f.keys())) > 0


def test_load_round_trip_is_bit_identical(trained, latent, saved):
    model, adata = trained
    loaded = bf.BioFormer.load(str(saved), adata=adata.copy())
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)
    assert loaded.loss_history() == model.loss_history()
    assert loaded.genes_.tolist() == model.genes_.tolist()
    for name, tensor in model.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name].cpu(), tensor.cpu()), name


def test_save_refuses_to_overwrite(trained, saved):
    model, _ = trained
    before = (saved / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(str(saved))
    assert (saved / "model.safetensors").stat().st_mtime_ns == before


def test_save_overwrites_when_asked(trained, latent, tmp_path):
    model, adata = trained
    model.save(str(tmp_path), overwrite=True)
    loaded = bf.BioFormer.load(str(tmp_path), adata=adata.copy())
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)


class _Payload:
    """Unpickling this creates ``path``: proof that something unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_load_never_unpickles(trained, saved, tmp_path, monkeypatch):
    _, adata = trained
    target = tmp_path / "model"
    target.mkdir()
    for name in ("model.json", "model.safetensors"):
        (target / name).write_bytes((saved / name).read_bytes())
    sentinel = tmp_path / "unpickled"
    bomb = pickle.dumps(_Payload(sentinel))
    # files other loaders would unpickle (scvi-tools' own format is a torch pickle)
    for name in ("model.pt", "model.pkl", "attr.pkl"):
        (target / name).write_bytes(bomb)
    # a model.json pointing at odd things: an object array holding the pickle, a pickle-ish tag
    with open(target / "model.json") as f:
        attributes = json.load(f)
    attributes["binning"]["payload"] = {"__ndarray__": [bomb.decode("latin1")], "dtype": "O"}
    attributes["binning"]["__reduce__"] = {"py/object": "os.system", "args": ["touch " + str(sentinel)]}
    with open(target / "model.json", "w") as f:
        json.dump(attributes, f)

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("unpickling refused")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    with contextlib.suppress(Exception):  # rejecting the odd file is fine; unpickling it is not
        bf.BioFormer.load(str(target), adata=adata.copy())
    assert calls == []
    assert not sentinel.exists()


def test_load_without_model_files_raises(trained, tmp_path):
    _, adata = trained
    with pytest.raises(FileNotFoundError, match=r"BioFormer\.save"):
        bf.BioFormer.load(str(tmp_path), adata=adata.copy())


@pytest.mark.parametrize(
    "genes",
    [
        pytest.param(lambda a: a[:, 1:], id="missing gene"),
        pytest.param(lambda a: a[:, ::-1], id="reordered genes"),
        pytest.param(lambda a: a[:, [*a.var_names[:-1].tolist(), "gene_0"]], id="duplicated gene"),
    ],
)
def test_load_with_other_genes_raises(trained, saved, genes):
    _, adata = trained
    other = genes(adata).copy()
    with pytest.raises(ValueError, match="genes"):
        bf.BioFormer.load(str(saved), adata=other)
