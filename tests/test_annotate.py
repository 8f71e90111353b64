"""``bf.tl.annotate``: planted cell types recovered on held-out cells, the user's model untouched, bad input refused."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import bioformers as bf
from bioformers._keys import Keys

KEYS = Keys()
TYPES = ["type_0", "type_1", "type_2"]
N_REF = 240
# fast head training on the tiny reference; the defaults (100 epochs) are for real data
HEAD = {"max_epochs": 30, "accelerator": "cpu"}
ALL = {"fine_tune": "all", "max_epochs": 3, "accelerator": "cpu"}


@pytest.fixture(scope="module")
def split(pretrain_kwargs):
    """``(model, reference, query)``: one synthetic draw split into reference and held-out query cells.

    Cell types share their profiles only within one draw (``synthetic`` samples them from the seed),
    so the query is held-out cells of the same draw; the model is pretrained on the reference only.
    """
    cells = bf.datasets.synthetic(n_obs=N_REF + 90, n_vars=40, seed=3)
    ref, query = cells[:N_REF].copy(), cells[N_REF:].copy()
    model = bf.tl.pretrain(ref, **pretrain_kwargs)
    return model, ref, query


def accuracy(adata) -> float:
    return float((adata.obs[KEYS.label].astype(str) == adata.obs["cell_type"].astype(str)).mean())


@pytest.mark.parametrize("mode", [HEAD, ALL], ids=["head", "all"])
def test_planted_types_are_recovered_on_held_out_cells(split, mode):
    model, ref, query = split
    query = query.copy()
    bf.tl.annotate(ref, model, labels_key="cell_type", query=query, **mode)
    # chance is 1/3; a classifier that ignores the cells or their labels stays near it
    assert accuracy(query) >= 0.9
    labels = query.obs[KEYS.label]
    assert labels.cat.categories.tolist() == TYPES
    probabilities = query.obsm[KEYS.label_probabilities]
    assert probabilities.shape == (query.n_obs, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(labels.cat.codes.to_numpy(), probabilities.argmax(axis=1))
    confidence = query.obs[KEYS.confidence].to_numpy()
    assert confidence.dtype == np.float32 and ((confidence >= 1 / 3) & (confidence <= 1)).all()
    np.testing.assert_array_equal(confidence, probabilities.max(axis=1))
    record = query.uns[KEYS.annotation]
    assert record["classes"].tolist() == TYPES
    assert record["params"]["fine_tune"] == mode.get("fine_tune", "head")
    assert len(record["history"]["train_loss"]) == mode["max_epochs"]
    assert len(record["history"]["validation_loss"]) == mode["max_epochs"]
    # the reference got nothing
    assert KEYS.label not in ref.obs and KEYS.annotation not in ref.uns


def test_shuffled_reference_labels_give_chance_accuracy(split):
    """The classifier learns from the labels: with labels unrelated to the cells it cannot recover the types."""
    model, ref, query = split
    ref, query = ref.copy(), query.copy()
    ref.obs["shuffled"] = np.random.default_rng(0).permutation(ref.obs["cell_type"].to_numpy())
    bf.tl.annotate(ref, model, labels_key="shuffled", query=query, **HEAD)
    assert accuracy(query) < 0.6


def test_fine_tune_all_leaves_the_users_model_unchanged(split):
    model, ref, query = split
    before = {name: value.clone() for name, value in model.module.state_dict().items()}
    history, training = model.loss_history(), model.module.training
    tuned = bf.tl.annotate(ref, model, labels_key="cell_type", query=query, copy=True, **ALL)
    # the linear probe that "all" starts from is the default "head" run
    probed = bf.tl.annotate(ref, model, labels_key="cell_type", query=query, copy=True, accelerator="cpu")
    record = tuned.uns[KEYS.annotation]
    np.testing.assert_array_equal(
        record["history"]["head_train_loss"], probed.uns[KEYS.annotation]["history"]["train_loss"]
    )
    assert record["history"]["train_loss"].size == ALL["max_epochs"]
    assert not np.allclose(tuned.obsm[KEYS.label_probabilities], probed.obsm[KEYS.label_probabilities], atol=1e-3)
    after = model.module.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert all(not p.requires_grad or p.grad is None for p in model.module.parameters())
    assert model.loss_history() == history and model.module.training == training


def test_self_annotation_labels_the_unlabelled_cells(split):
    model, ref, _ = split
    adata = ref.copy()
    unlabelled = np.arange(adata.n_obs) % 4 == 0
    adata.obs["partial"] = adata.obs["cell_type"].astype(object).mask(unlabelled)
    bf.tl.annotate(adata, model, labels_key="partial", **HEAD)
    record = adata.uns[KEYS.annotation]
    assert record["params"]["n_reference_cells"] == int((~unlabelled).sum())
    hidden = adata[unlabelled]
    assert accuracy(hidden) >= 0.9
    # a non-categorical column: classes sorted; the user's column untouched
    assert adata.obs[KEYS.label].cat.categories.tolist() == TYPES
    assert adata.obs["partial"].isna().sum() == unlabelled.sum()


def test_classes_follow_the_order_of_the_categories(split):
    model, ref, query = split
    ref = ref.copy()
    order = ["type_2", "type_0", "type_1"]
    ref.obs["cell_type"] = ref.obs["cell_type"].cat.reorder_categories(order).cat.add_categories(["unused"])
    query = query.copy()
    bf.tl.annotate(ref, model, labels_key="cell_type", query=query, **HEAD)
    assert query.obs[KEYS.label].cat.categories.tolist() == order
    assert query.uns[KEYS.annotation]["classes"].tolist() == order
    assert query.uns[KEYS.annotation]["n_train_cells"].sum() == N_REF - 24  # 10% held out for validation


def test_same_seed_same_result_and_seed_matters(split):
    model, ref, query = split
    runs = []
    for seed in (0, 0, 1):
        annotated = bf.tl.annotate(ref, model, labels_key="cell_type", query=query, seed=seed, copy=True, **HEAD)
        runs.append(annotated.obsm[KEYS.label_probabilities])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_query_genes_are_matched_by_name_and_backed_query_is_read(split, tmp_path):
    model, ref, query = split
    expected = bf.tl.annotate(ref, model, labels_key="cell_type", query=query, copy=True, **HEAD)
    shuffled = query[:, query.var_names[::-1]].copy()
    shuffled.var_names = shuffled.var_names.astype(str)
    bf.tl.annotate(ref, model, labels_key="cell_type", query=shuffled, **HEAD)
    np.testing.assert_allclose(
        shuffled.obsm[KEYS.label_probabilities], expected.obsm[KEYS.label_probabilities], rtol=1e-5, atol=1e-6
    )
    path = tmp_path / "query.h5ad"
    query.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    bf.tl.annotate(ref, model, labels_key="cell_type", query=backed, **HEAD)
    pd.testing.assert_series_equal(backed.obs[KEYS.label], expected.obs[KEYS.label])


def test_results_survive_h5ad(split, tmp_path):
    model, ref, query = split
    annotated = bf.tl.annotate(ref, model, labels_key="cell_type", query=query, validation_size=0, copy=True, **HEAD)
    record = annotated.uns[KEYS.annotation]
    assert record["best_epoch"] == HEAD["max_epochs"] - 1 and record["history"]["validation_loss"].size == 0
    path = tmp_path / "annotated.h5ad"
    annotated.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_series_equal(back.obs[KEYS.label], annotated.obs[KEYS.label])
    pd.testing.assert_series_equal(back.obs[KEYS.confidence], annotated.obs[KEYS.confidence])
    np.testing.assert_array_equal(back.obsm[KEYS.label_probabilities], annotated.obsm[KEYS.label_probabilities])
    saved = back.uns[KEYS.annotation]
    assert saved["classes"].tolist() == TYPES
    assert saved["params"] == record["params"]
    np.testing.assert_array_equal(saved["history"]["train_loss"], record["history"]["train_loss"])
    np.testing.assert_array_equal(saved["n_train_cells"], record["n_train_cells"])


def test_copy_leaves_the_query_unchanged(split, deep_snapshot, assert_same_anndata):
    model, ref, query = split
    before = deep_snapshot(query)
    annotated = bf.tl.annotate(ref, model, labels_key="cell_type", query=query, copy=True, **HEAD)
    assert_same_anndata(before, query)
    assert KEYS.label in annotated.obs


def _single_class(ref):
    ref.obs["one"] = "T cell"
    return {"labels_key": "one"}


def _lonely_cell(ref):
    ref.obs["lonely"] = ref.obs["cell_type"].astype(str)
    ref.obs.iloc[0, ref.obs.columns.get_loc("lonely")] = "platelet"
    return {"labels_key": "lonely"}


BAD_INPUT = {
    "unknown labels_key": (lambda ref: {"labels_key": "cell_typ"}, KeyError, "Did you mean 'cell_type'"),
    "single class": (_single_class, ValueError, "at least two"),
    "class with one cell": (_lonely_cell, ValueError, r"'platelet' \(1\).*Merge"),
    "bad fine_tune": (lambda ref: {"fine_tune": "everything"}, ValueError, "'head' or 'all'"),
    "bad validation_size": (lambda ref: {"validation_size": 1.0}, ValueError, r"lie in \[0, 1\)"),
    "bad max_epochs": (lambda ref: {"max_epochs": 0}, ValueError, "positive whole number"),
    "not a model": (lambda ref: {"model": "model"}, TypeError, "trained bf.BioFormer"),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_refused_before_anything_is_written(split, case, deep_snapshot, assert_same_anndata):
    model, ref, query = split
    ref, query = ref.copy(), query.copy()
    make, error, message = BAD_INPUT[case]
    kwargs = {"model": model, "labels_key": "cell_type", **make(ref)}
    before_ref, before_query = deep_snapshot(ref), deep_snapshot(query)
    with pytest.raises(error, match=message):
        bf.tl.annotate(ref, query=query, **kwargs)
    assert_same_anndata(before_ref, ref)
    assert_same_anndata(before_query, query)


def test_untrained_model_is_refused(split, tiny_model, deep_snapshot, assert_same_anndata):
    _, ref, query = split
    work = ref.copy()
    bf.pp.bin(work)
    bf.BioFormer.setup_anndata(work)
    untrained = bf.BioFormer(work, **tiny_model)
    before = deep_snapshot(query)
    with pytest.raises(ValueError, match="has not been trained"):
        bf.tl.annotate(ref, untrained, labels_key="cell_type", query=query)
    assert_same_anndata(before, query)


def test_query_without_the_models_genes_is_refused(split, deep_snapshot, assert_same_anndata):
    model, ref, query = split
    few = query[:, :10].copy()
    before_ref, before_query = deep_snapshot(ref), deep_snapshot(few)
    with pytest.raises(ValueError, match=r"coverage|genes"):
        bf.tl.annotate(ref, model, labels_key="cell_type", query=few)
    assert_same_anndata(before_ref, ref)
    assert_same_anndata(before_query, few)


def test_view_query_is_refused_unless_copy(split):
    model, ref, query = split
    view = query[:20]
    with pytest.raises(ValueError, match="is a view"):
        bf.tl.annotate(ref, model, labels_key="cell_type", query=view)
    annotated = bf.tl.annotate(ref, model, labels_key="cell_type", query=view, copy=True, key_added="ct", **HEAD)
    assert annotated.n_obs == 20 and "ct_label" not in view.obs
    assert {"ct_label", "ct_confidence"} <= set(annotated.obs) and "ct_annotation" in annotated.uns
    assert "ct_label_probabilities" in annotated.obsm
