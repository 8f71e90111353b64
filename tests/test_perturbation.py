"""Perturbation response: external tokens, train_perturbation, predict_perturbation."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
import torch

import bioformers as bf

TRAIN = {
    "n_hidden": 32,
    "n_layers": 1,
    "n_heads": 2,
    "batch_size": 32,
    "lr": 3e-3,
    "enable_progress_bar": False,
    "accelerator": "cpu",
    "pretrain": False,  # pretraining on the controls, the default, has its own test: the others skip its time
}
# one measured target of each program held out: the other target of its program is seen
HELD_OUT = ["gene_12", "gene_0"]


@pytest.fixture(scope="session")
def _screen():
    return bf.datasets.synthetic_perturbation(n_obs=1000, n_vars=30, n_programs=2, targets_per_program=2, seed=0)


@pytest.fixture
def screen(_screen):
    """Synthetic CRISPR screen with planted effects (30 genes, 4 measured + 2 unmeasured targets)."""
    return _screen.copy()


@pytest.fixture(scope="session")
def cells_model(_screen):
    """A model trained on the cells split (every perturbation seen)."""
    return bf.tl.train_perturbation(
        _screen.copy(), perturbation_key="perturbation", split="cells", max_epochs=30, seed=0, **TRAIN
    )


def _observed_delta(adata, perturbation):
    log = adata.copy()
    sc.pp.normalize_total(log, target_sum=1e4)
    sc.pp.log1p(log)
    labels = log.obs["perturbation"].astype(str).to_numpy()
    X = log.X.toarray()
    return X[labels == perturbation].mean(0) - X[labels == "control"].mean(0)


def _predicted_delta(model, adata, perturbation):
    pred = bf.tl.predict_perturbation(model, adata, [perturbation, "control"], n_cells=200)
    means = bf.metrics.mean_profiles(pred)
    return (means.loc[perturbation] - means.loc["control"]).to_numpy()


def test_synthetic_screen_has_measured_and_unmeasured_targets(_screen):
    perturbations = [p for p in _screen.obs["perturbation"].cat.categories if p != "control"]
    measured = [p for p in perturbations if p in _screen.var_names]
    assert len(measured) == 4 and len(perturbations) == 6


def test_recovers_planted_effects_of_seen_perturbations(cells_model, screen):
    planted = screen.uns["planted_effect"]
    for perturbation in planted.index:
        corr = np.corrcoef(_predicted_delta(cells_model, screen, perturbation), planted.loc[perturbation])[0, 1]
        assert corr > 0.8, (perturbation, corr)


def test_unmeasured_targets_get_gene_tokens(cells_model, screen):
    assert set(cells_model.vocabulary_[: screen.n_vars]) == set(screen.var_names)
    assert sorted(cells_model.vocabulary_[screen.n_vars :]) == ["unmeasured_0", "unmeasured_1"]
    assert cells_model.module.gene_embedding.num_embeddings == screen.n_vars + 2
    # the unmeasured target's effect reaches the prediction through its own token
    delta = _predicted_delta(cells_model, screen, "unmeasured_0")
    planted = screen.uns["planted_effect"].loc["unmeasured_0"]
    assert np.corrcoef(delta, planted)[0, 1] > 0.8


def test_combination_moves_both_programs(cells_model, screen):
    # never seen together in training: gene_12 raises program 1, unmeasured_0 lowers program 0
    delta = _predicted_delta(cells_model, screen, "gene_12+unmeasured_0")
    planted = screen.uns["planted_effect"]
    assert np.corrcoef(delta, planted.loc["gene_12"] + planted.loc["unmeasured_0"])[0, 1] > 0.85
    program = screen.var["program"].to_numpy()
    responders = ~screen.var_names.isin(["gene_12"])
    assert delta[(program == 1) & responders].mean() > 0.2
    assert delta[(program == 0) & responders].mean() < -0.2


def test_perturbed_positions_are_never_dropped(cells_model):
    module = cells_model.module
    n_genes = cells_model.genes_.size
    bins = torch.zeros(8, n_genes, dtype=torch.long)
    bins[:, :20] = 3  # more expressed genes than fit: the unexpressed target must still enter
    module.max_seq_len, original = 12, module.max_seq_len
    try:
        targets = torch.tensor([[25, n_genes]] * 8)  # an unexpressed measured gene and an unmeasured target
        genes, values, no_value, external, padding = module.perturbation_tokens(bins, targets)
    finally:
        module.max_seq_len = original
    assert genes.shape == (8, 12 - 1)
    assert (genes == 25).any(dim=1).all()
    assert (external[genes == 25] == 1).all() and external[genes != 25].sum() == 8  # plus the unmeasured token
    assert (genes[:, -1] == n_genes).all() and no_value[:, -1].all() and no_value[:, :-1].sum() == 0
    assert (values[:, -1] == 0).all()  # no measured value: the MASK value stands in
    # the measured target's slot is padding (the gene is in the sequence already), as is an empty slot
    assert padding[:, -2].all() and padding.sum() == 8
    _, _, _, _, padding = module.perturbation_tokens(bins, torch.tensor([[25, -1]] * 8))
    assert padding[:, -2:].all() and padding.sum() == 16


def test_prediction_output(cells_model, screen):
    pred = bf.tl.predict_perturbation(cells_model, screen, ["gene_0", "control"], n_cells=30, seed=1)
    assert pred.shape == (60, screen.n_vars)
    assert list(pred.var_names) == list(screen.var_names)
    np.testing.assert_array_equal(pred.X, pred.layers["bioformers_predicted"])
    assert (pred.obs["perturbation"].value_counts() == 30).all()
    controls = screen.obs_names[screen.obs["perturbation"] == "control"]
    assert pred.obs["control_cell"].isin(controls).all()
    again = bf.tl.predict_perturbation(cells_model, screen, ["gene_0", "control"], n_cells=30, seed=1)
    np.testing.assert_array_equal(pred.X, again.X)


def test_simulation_split_and_save_load_round_trip(screen, tmp_path):
    model = bf.tl.train_perturbation(
        screen, perturbation_key="perturbation", test_perturbations=HELD_OUT, max_epochs=1, seed=0, **TRAIN
    )
    record = screen.uns["bioformers_perturbation"]
    assert record["test_perturbations"] == HELD_OUT
    assert not set(record["train_perturbations"]) & set(HELD_OUT)
    assert len(record["history"]["train_loss"]) == 1
    model.save(str(tmp_path / "model"))
    loaded = bf.BioFormer.load(str(tmp_path / "model"), adata=model.adata)
    assert loaded.perturbation_ == model.perturbation_
    assert loaded.perturbation_["split"] == "simulation"
    np.testing.assert_array_equal(loaded.vocabulary_, model.vocabulary_)
    a = bf.tl.predict_perturbation(model, screen, HELD_OUT, n_cells=20)
    b = bf.tl.predict_perturbation(loaded, screen, HELD_OUT, n_cells=20)
    np.testing.assert_allclose(a.X, b.X, atol=1e-5)


def test_default_hold_out_picks_measured_targets(screen):
    model = bf.tl.train_perturbation(screen, perturbation_key="perturbation", max_epochs=1, seed=3, **TRAIN)
    test = model.perturbation_["test_perturbations"]
    assert len(test) == 1 and test[0] in screen.var_names


def test_fine_tunes_a_pretrained_model(screen):
    pretrained = bf.tl.pretrain(screen.copy(), max_epochs=1, **{k: v for k, v in TRAIN.items() if k != "pretrain"})
    model = bf.tl.train_perturbation(
        screen, pretrained, perturbation_key="perturbation", test_perturbations=HELD_OUT, max_epochs=1, **TRAIN
    )
    start = pretrained.module.gene_embedding.weight
    # every measured gene starts from its pretrained token; the two unmeasured targets are new
    assert model.module.gene_embedding.num_embeddings == start.shape[0] + 2
    assert model.binning_ == pretrained.binning_
    with pytest.raises(ValueError, match="already trained on"):
        bf.tl.train_perturbation(
            screen, model, perturbation_key="perturbation", test_perturbations=["gene_2"], max_epochs=1, **TRAIN
        )


def test_pretrains_on_the_controls_and_starts_from_the_train_mean(screen):
    kwargs = TRAIN | {"pretrain": True}  # the default
    model = bf.tl.train_perturbation(
        screen, perturbation_key="perturbation", test_perturbations=HELD_OUT, max_epochs=1, seed=0, **kwargs
    )
    assert screen.uns["bioformers_perturbation"]["params"]["pretrained"] == "on the control cells"
    # with the learned, perturbation-specific change switched off, a perturbed cell is predicted as
    # the train-mean baseline: the control mean plus the mean response of the training perturbations
    module = model.module
    with torch.no_grad():
        for layer in (module.response_cls_head, module.response_token_head[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
        module.response_query.weight.zero_()
    predicted = bf.metrics.mean_profiles(bf.tl.predict_perturbation(model, screen, HELD_OUT, n_cells=50))
    log = screen.copy()
    log.X = bf.data.log_normalize(log.X)
    train = log[~log.obs["perturbation"].isin(HELD_OUT)].copy()
    expected = bf.metrics.perturbation_baselines(train, HELD_OUT, methods="train_mean")["train_mean"]
    np.testing.assert_allclose(predicted.loc[HELD_OUT].to_numpy(), expected.to_numpy(), atol=1e-4)


def test_can_start_from_random_weights(screen):
    kwargs = {"perturbation_key": "perturbation", "test_perturbations": HELD_OUT, "max_epochs": 1, "seed": 0} | TRAIN
    scratch = bf.tl.train_perturbation(screen, **(kwargs | {"pretrain": False}))
    assert screen.uns["bioformers_perturbation"]["params"]["pretrained"] is False
    pretrained = bf.tl.train_perturbation(screen, **(kwargs | {"pretrain": True}))
    # the same seed, data and steps: only the starting weights differ
    a = scratch.module.gene_embedding.weight.detach()
    b = pretrained.module.gene_embedding.weight.detach()
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"control": "ctrl"}, "control label 'ctrl'"),
        ({"perturbation_key": "guide"}, "guide"),
        ({"split": "genes"}, "`split` must be"),
        ({"test_perturbations": ["control"]}, "control label"),
        ({"test_perturbations": ["NOTAGENE"]}, "not labels of the data"),
        ({"test_perturbations": ["gene_0", "gene_0"]}, "twice"),
        ({"min_cells": 10_000}, "fewer than `min_cells"),
        ({"split": "cells", "test_perturbations": ["gene_0"]}, "applies to `split='simulation'`"),
        ({"pretrain": "yes"}, "True or False"),
    ],
)
def test_bad_training_input_is_refused_before_writing(screen, kwargs, match):
    before = screen.copy()
    with pytest.raises((ValueError, KeyError, TypeError), match=match):
        bf.tl.train_perturbation(screen, **({"perturbation_key": "perturbation"} | TRAIN | kwargs), max_epochs=1)
    assert set(screen.uns) == set(before.uns) and set(screen.layers) == set(before.layers)
    assert (screen.X != before.X).nnz == 0


def test_unknown_perturbation_at_prediction_names_it(cells_model, screen):
    with pytest.raises(ValueError, match=r"no gene token for \['NOTAGENE'\]"):
        bf.tl.predict_perturbation(cells_model, screen, ["gene_0", "NOTAGENE"])
    with pytest.raises(ValueError, match="empty"):
        bf.tl.predict_perturbation(cells_model, screen, [])
    no_controls = screen[screen.obs["perturbation"] != "control"].copy()
    with pytest.raises(ValueError, match="no 'control' cells"):
        bf.tl.predict_perturbation(cells_model, no_controls, ["gene_0"])


def test_model_without_perturbations_refuses(trained, screen):
    model, _ = trained
    with pytest.raises(ValueError, match="not set up for perturbations"):
        bf.tl.predict_perturbation(model, screen, ["gene_0"])
