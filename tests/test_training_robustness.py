"""Checkpoints, exact resume, divergence and Ctrl-C during training (issue 6, part 6).

One uninterrupted reference run (4 epochs, checkpoints every 2) is built per module; the other runs
are compared with it bit for bit: on the CPU, with the same seed, a resumed run must end with the
same weights, loss history and embedding as a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import pickle
import signal

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import Callback
from safetensors import safe_open

import bioformers as bf
from bioformers.module import BioFormerModule, BioFormerPerturbationModule
from bioformers.train import CHECKPOINT_JSON, CHECKPOINT_TENSORS, NonFiniteLossError

TINY_MODEL = {"n_hidden": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 24}
TRAIN = {"max_epochs": 4, "batch_size": 32, "lr": 3e-3, "enable_progress_bar": False, "accelerator": "cpu"}
# 200 cells, 90% for training, batches of 32
STEPS_PER_EPOCH = 6


@pytest.fixture(scope="module")
def binned(_counts):
    adata = _counts.copy()
    bf.pp.bin(adata)
    return adata


def _model(binned, seed=0, **size):
    """A fresh model on a copy of ``binned``, built after seeding as a user would."""
    scvi.settings.seed = seed
    adata = binned.copy()
    bf.BioFormer.setup_anndata(adata)
    return bf.BioFormer(adata, **(TINY_MODEL | size))


@pytest.fixture(scope="module")
def straight(binned, tmp_path_factory):
    """``(model, checkpoint_dir)``: the reference run, 4 epochs without interruption, checkpoints every 2."""
    directory = tmp_path_factory.mktemp("straight")
    model = _model(binned)
    model.train(save_checkpoints=directory, checkpoint_every=2, **TRAIN)
    return model, directory


def assert_same_run(model, reference):
    """Bit-identical weights, loss history (every logged metric) and embedding."""
    state, expected = model.module.state_dict(), reference.module.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    assert model.history_.keys() == reference.history_.keys()
    for name, frame in reference.history_.items():
        pd.testing.assert_frame_equal(model.history_[name], frame)
    np.testing.assert_array_equal(model.get_latent_representation(), reference.get_latent_representation())


class StopAt(Callback):
    """Raise ``KeyboardInterrupt`` when epoch ``epoch`` (0-based) starts, as Ctrl-C would."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


# --- checkpoints --------------------------------------------------------------------------------
def test_checkpoints_every_n_epochs_are_safetensors_and_json(straight):
    _, directory = straight
    assert sorted(os.listdir(directory)) == ["epoch_0002", "epoch_0004"]
    for name in ("epoch_0002", "epoch_0004"):
        assert sorted(os.listdir(directory / name)) == [CHECKPOINT_JSON, CHECKPOINT_TENSORS]
        with open(directory / name / CHECKPOINT_JSON) as f:
            tree = json.load(f)
        assert tree["format"] == "bioformers-training-checkpoint"
        checkpoint = tree["checkpoint"]
        assert checkpoint["global_step"] == STEPS_PER_EPOCH * int(name[-4:])
        assert checkpoint["bioformers"]["run"]["max_epochs"] == TRAIN["max_epochs"]
        with safe_open(str(directory / name / CHECKPOINT_TENSORS), framework="pt") as f:
            keys = set(f.keys())
        # weights, optimizer moments and the random states
        assert any(key.startswith("/state_dict/module.") for key in keys)
        assert any(key.startswith("/optimizer_states/") for key in keys)
        assert "/bioformers/random/torch" in keys


def test_checkpoint_every_must_be_a_positive_whole_number(binned, tmp_path):
    model = _model(binned)
    for every in (0, 1.5, True):
        with pytest.raises(ValueError, match="checkpoint_every"):
            model.train(save_checkpoints=tmp_path, checkpoint_every=every, **TRAIN)
    assert not model.is_trained_


# --- resume -------------------------------------------------------------------------------------
def test_resume_reproduces_the_uninterrupted_run(binned, straight):
    reference, directory = straight
    model = _model(binned)
    model.train(resume_from=directory / "epoch_0002", **TRAIN)
    assert_same_run(model, reference)


def test_resume_never_unpickles(binned, straight, monkeypatch):
    reference, directory = straight

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    model = _model(binned)
    model.train(resume_from=directory, **TRAIN)  # the last checkpoint: everything restored, nothing left to train
    assert_same_run(model, reference)


def test_keyboard_interrupt_leaves_a_usable_model_that_resumes_exactly(binned, straight, tmp_path):
    reference, _ = straight
    model = _model(binned)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.warns(UserWarning, match=r"interrupted \(KeyboardInterrupt\) after 2 of 4 epochs"):
        model.train(save_checkpoints=tmp_path, callbacks=[StopAt(2)], **TRAIN)
    # Lightning leaves Ctrl-C ignored after its shutdown; train restores the handler
    assert signal.getsignal(signal.SIGINT) is handler
    assert model.is_trained_
    assert not model.module.training
    history = model.loss_history()
    assert history["train_loss"] == reference.loss_history()["train_loss"][:2]
    assert len(history["validation_loss"]) == 2
    latent = model.get_latent_representation()
    assert latent.shape == (binned.n_obs, TINY_MODEL["n_hidden"]) and np.isfinite(latent).all()
    assert sorted(os.listdir(tmp_path)) == ["epoch_0001", "epoch_0002"]

    # the same model object continues from its latest checkpoint to the uninterrupted result
    model.train(resume_from=tmp_path, **TRAIN)
    assert_same_run(model, reference)


def test_keyboard_interrupt_before_any_step_propagates(binned):
    model = _model(binned)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        model.train(callbacks=[StopAt(0)], **TRAIN)
    assert signal.getsignal(signal.SIGINT) is handler
    assert not model.is_trained_


def test_resume_with_other_settings_warns_and_continues(binned, straight):
    _, directory = straight
    model = _model(binned)
    with pytest.warns(UserWarning, match=r"max_epochs=5 \(checkpoint: 4\).*not to the result of an uninterrupted"):
        model.train(resume_from=directory, **(TRAIN | {"max_epochs": 5}))
    assert len(model.loss_history()["train_loss"]) == 5


def test_resume_into_another_model_is_refused_before_training(binned, straight):
    _, directory = straight
    model = _model(binned, n_hidden=8)
    before = {name: tensor.clone() for name, tensor in model.module.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"different model \(module\.bin_head\.0\.bias: \(16,\) in the checkpoint, \(8,\) in the model;.*genes",
    ):
        model.train(resume_from=directory, **TRAIN)
    assert not model.is_trained_
    for name, tensor in model.module.state_dict().items():
        assert torch.equal(tensor, before[name]), name


class _Payload:
    """Unpickling this creates ``path``: proof that something was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_from_anything_but_a_bioformers_checkpoint_is_refused(binned, tmp_path):
    model = _model(binned)
    sentinel = tmp_path / "unpickled"
    bomb = tmp_path / "last.ckpt"
    bomb.write_bytes(pickle.dumps(_Payload(sentinel)))
    with pytest.raises(ValueError, match="never opens because unpickling can run code"):
        model.train(resume_from=bomb, **TRAIN)
    assert not sentinel.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no bioformers checkpoint"):
        model.train(resume_from=empty, **TRAIN)
    with pytest.raises(FileNotFoundError, match="No checkpoint at"):
        model.train(resume_from=tmp_path / "missing", **TRAIN)
    with pytest.raises(ValueError, match="resume_from="):
        model.train(ckpt_path=str(bomb), **TRAIN)
    assert not sentinel.exists()
    assert not model.is_trained_


def test_pretrain_saves_checkpoints_and_resumes(counts, tmp_path):
    kwargs = TINY_MODEL | TRAIN | {"max_epochs": 2, "seed": 0}
    reference = counts.copy()
    bf.tl.pretrain(reference, save_checkpoints=tmp_path, **kwargs)
    resumed = counts.copy()
    bf.tl.pretrain(resumed, resume_from=tmp_path / "epoch_0001", **kwargs)
    np.testing.assert_array_equal(resumed.obsm["X_bioformers"], reference.obsm["X_bioformers"])
    assert resumed.uns["bioformers"]["history"] == reference.uns["bioformers"]["history"]


# --- divergence ---------------------------------------------------------------------------------
@pytest.fixture
def nan_loss_at(monkeypatch):
    """``nan_loss_at(step)``: make the loss of training step ``step`` (1-based) NaN; returns the weights before it."""

    def inject(step: int) -> dict:
        loss, calls, before = BioFormerModule.loss, [], {}

        def poisoned(self, *args, **kwargs):
            output = loss(self, *args, **kwargs)
            if self.training:
                calls.append(1)
                if len(calls) == step:
                    before.update({name: t.detach().clone() for name, t in self.state_dict().items()})
                    output.loss = output.loss * float("nan")
            return output

        monkeypatch.setattr(BioFormerModule, "loss", poisoned)
        return before

    return inject


def test_nan_loss_stops_training_with_a_clear_error_and_keeps_the_last_good_weights(binned, nan_loss_at, tmp_path):
    before = nan_loss_at(STEPS_PER_EPOCH + 2)  # second step of the second epoch
    model = _model(binned)
    with pytest.raises(NonFiniteLossError, match=r"(?s)epoch 2, optimiser step 8: the loss is nan.*learning rate") as e:
        model.train(save_checkpoints=tmp_path, **TRAIN)
    message = str(e.value)
    for cause in ("lr", "warmup_fraction", "precision='32-true'", "bf.pp.bin", "resume_from="):
        assert cause in message
    assert isinstance(e.value, FloatingPointError)
    # the failing step never reached the weights: they are those the NaN loss was computed with
    for name, tensor in model.module.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert model.is_trained_
    assert len(model.loss_history()["train_loss"]) == 1
    assert np.isfinite(model.get_latent_representation()).all()
    assert sorted(os.listdir(tmp_path)) == ["epoch_0001"]


def test_nan_gradient_stops_training(binned):
    model = _model(binned)
    steps = []

    def poison(grad):
        steps.append(1)
        return grad * float("nan") if len(steps) == 3 else grad

    model.module.gene_embedding.weight.register_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"optimiser step 3: the gradient norm is nan"):
        model.train(**TRAIN)
    for name, tensor in model.module.state_dict().items():
        assert torch.isfinite(tensor).all(), name
    assert model.is_trained_ and model.loss_history()["train_loss"] == []


def test_pretrain_stops_on_nan(counts, nan_loss_at):
    nan_loss_at(1)
    with pytest.raises(NonFiniteLossError, match="step 1: the loss is nan"):
        bf.tl.pretrain(counts, **TINY_MODEL, **TRAIN)


# --- perturbation fine-tuning -------------------------------------------------------------------
PERTURBATION = {
    "perturbation_key": "perturbation",
    "n_hidden": 16,
    "n_layers": 1,
    "n_heads": 2,
    "max_epochs": 2,
    "batch_size": 32,
    "lr": 3e-3,
    "seed": 0,
    "enable_progress_bar": False,
    "accelerator": "cpu",
}


@pytest.fixture(scope="module")
def _screen():
    return bf.datasets.synthetic_perturbation(n_obs=300, n_vars=24, n_programs=2, n_unmeasured=1)


def test_perturbation_training_resumes_exactly(_screen, tmp_path):
    reference = bf.tl.train_perturbation(_screen.copy(), save_checkpoints=tmp_path, **PERTURBATION)
    # the pairs' generators (cell order, control draws) travel in the checkpoint
    with open(tmp_path / "epoch_0001" / CHECKPOINT_JSON) as f:
        assert "PerturbationPairs" in json.load(f)["checkpoint"]
    resumed = bf.tl.train_perturbation(_screen.copy(), resume_from=tmp_path / "epoch_0001", **PERTURBATION)
    for name, tensor in reference.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[name], tensor), name
    assert resumed.loss_history() == reference.loss_history()


def test_perturbation_training_interrupt_and_nan(_screen, monkeypatch):
    with pytest.warns(UserWarning, match="after 1 of 2 epochs"):
        model = bf.tl.train_perturbation(_screen.copy(), callbacks=[StopAt(1)], **PERTURBATION)
    assert model.is_trained_ and len(model.loss_history()["train_loss"]) == 1
    response = model.get_perturbation_response(model.adata.layers["bioformers_binned"][:5], np.full((5, 1), 0))
    assert np.isfinite(response).all()

    response_loss = BioFormerPerturbationModule.response_loss

    def infinite(self, batch):
        output = response_loss(self, batch)
        output.loss = output.loss * float("inf")
        return output

    monkeypatch.setattr(BioFormerPerturbationModule, "response_loss", infinite)
    with pytest.raises(NonFiniteLossError, match="the loss is inf"):
        bf.tl.train_perturbation(_screen.copy(), **PERTURBATION)
