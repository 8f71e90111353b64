"""Gene-level tools: bf.tl.predict, attention_grn, gene_embeddings, gene_programs."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import bioformers as bf
from bioformers.data import prediction_masks, select_genes
from bioformers.module import BioFormerModule
from bioformers.pp._binning import bin_centers


@pytest.fixture
def fitted(trained):
    """The session's tiny model and a fresh copy of its training AnnData."""
    model, adata = trained
    return model, adata.copy()


# --- predict ---------------------------------------------------------------------------------------
def test_predict_writes_layers_and_record(fitted):
    model, adata = fitted
    bf.tl.predict(adata, model)
    expected = adata.layers["bioformers_predicted"]
    best = adata.layers["bioformers_predicted_bins"]
    assert expected.shape == best.shape == adata.shape
    assert expected.dtype == np.float32 and best.dtype == np.int16
    centers = bin_centers(model.binning_, model.module.n_bins)
    assert (expected >= 0).all() and (expected <= centers[-1]).all()
    assert 0 <= best.min() and best.max() < model.module.n_bins
    params = adata.uns["bioformers_predicted"]["params"]
    assert params["scale"] == "normalized counts" and "mask_ratio" not in params


def test_predict_without_mask_is_the_cls_decoding_on_the_value_scale(fitted):
    model, adata = fitted
    bins, best = model.get_predicted_bins(adata)
    np.testing.assert_array_equal(best, np.round(bins))
    bf.tl.predict(adata, model)
    centers = bin_centers(model.binning_, model.module.n_bins)
    np.testing.assert_allclose(adata.layers["bioformers_predicted"], np.interp(bins, np.arange(centers.size), centers))


def test_predict_is_deterministic(fitted):
    model, adata = fitted
    first = bf.tl.predict(adata, model, mask_ratio=0.25, copy=True)
    second = bf.tl.predict(adata, model, mask_ratio=0.25, copy=True)
    np.testing.assert_array_equal(first.layers["bioformers_predicted"], second.layers["bioformers_predicted"])


def test_masked_predict_uses_the_masked_head_for_sequence_genes_only(fitted):
    model, adata = fitted
    bins = torch.as_tensor(adata.layers["bioformers_binned"].toarray()).long()
    in_sequence = torch.zeros_like(bins, dtype=torch.bool)
    genes, _ = select_genes(bins, model.module.max_seq_len - 1, random=False)
    in_sequence.scatter_(1, genes, True)
    in_sequence = in_sequence.numpy()
    assert not in_sequence.all()  # the tiny model's sequences leave genes out: both branches are exercised
    decoded, _ = model.get_predicted_bins(adata)
    masked, masked_best = model.get_predicted_bins(adata, mask_ratio=0.25)
    np.testing.assert_array_equal(masked[~in_sequence], decoded[~in_sequence])
    assert not np.allclose(masked[in_sequence], decoded[in_sequence])
    # in the sequence, the most likely bin is the masked head's argmax, which is not a rounding
    assert (masked_best[in_sequence] != np.round(masked[in_sequence])).any()


def test_prediction_masks_hide_every_sequence_gene_exactly_once():
    bins = torch.randint(0, 5, (30, 40), generator=torch.Generator().manual_seed(0))
    masks = prediction_masks(bins, 23, mask_ratio=0.3)
    assert len(masks) == 4  # ceil(1 / 0.3)
    stacked = torch.stack(masks).sum(0)
    genes, _ = select_genes(bins, 23, random=False)
    covered = torch.zeros_like(bins, dtype=torch.bool).scatter(1, genes, True)
    assert (stacked[covered] == 1).all() and (stacked[~covered] == 0).all()
    sizes = torch.stack([m.sum(1) for m in masks])
    assert (sizes.max(0).values - sizes.min(0).values <= 1).all()


def test_masked_prediction_does_not_see_the_hidden_values():
    torch.manual_seed(0)
    module = BioFormerModule(12, 6, n_hidden=16, n_layers=2, n_heads=2, max_seq_len=16).eval()
    bins = torch.randint(0, 6, (5, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(5, 12, dtype=torch.bool)
    mask[:, [1, 4, 7]] = True
    changed = bins.clone()
    changed[mask] = (changed[mask] + 3) % 6
    expected, best = module.predict_masked(bins, mask)
    expected_changed, _ = module.predict_masked(changed, mask)
    torch.testing.assert_close(expected[mask], expected_changed[mask])
    assert torch.isnan(expected[~mask]).all() and (best[~mask] == -1).all()
    # a visible value does change the prediction: the test above can fail
    visible = bins.clone()
    visible[:, 0] = (visible[:, 0] + 3) % 6
    assert not torch.allclose(module.predict_masked(visible, mask)[0][mask], expected[mask])


def test_get_masked_predictions_checks_the_mask(fitted):
    model, adata = fitted
    with pytest.raises(ValueError, match="expected \\(n_cells, n_genes\\)"):
        model.get_masked_predictions(np.ones((3, adata.n_vars), bool), adata)
    with pytest.raises(ValueError, match="Hide fewer genes"):
        model.get_masked_predictions(np.ones(adata.shape, bool), adata)


def test_predict_copy_leaves_adata_untouched(fitted, snapshot, assert_unchanged):
    model, adata = fitted
    before = snapshot(adata)
    out = bf.tl.predict(adata, model, copy=True)
    assert_unchanged(before, adata)
    assert "bioformers_predicted" in out.layers


@pytest.mark.parametrize("mask_ratio", [0, 1, 1.5, -0.1])
def test_predict_bad_mask_ratio_raises_before_writing(fitted, snapshot, assert_unchanged, mask_ratio):
    model, adata = fitted
    before = snapshot(adata)
    with pytest.raises(ValueError, match="mask_ratio"):
        bf.tl.predict(adata, model, mask_ratio=mask_ratio)
    assert_unchanged(before, adata)


# --- attention ---------------------------------------------------------------------------------------
def brute_force_attention(model, adata, layer):
    """Mean attention per gene pair over the cells where both occur, one cell and one pair at a time."""
    n = adata.n_vars
    total, count = np.zeros((n, n)), np.zeros((n, n))
    bins = torch.as_tensor(adata.layers["bioformers_binned"].toarray())
    model.module.eval()
    with torch.inference_mode(), model.inference_context():
        for cell in range(adata.n_obs):
            genes, weights = model.module.attention(bins[cell : cell + 1], layer)
            genes, weights = genes[0].numpy(), weights[0].float().mean(0).numpy()
            for a, gene_a in enumerate(genes):
                for b, gene_b in enumerate(genes):
                    total[gene_a, gene_b] += weights[a, b]
                    count[gene_a, gene_b] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def test_attention_aggregation_equals_brute_force(fitted):
    model, adata = fitted
    adata = adata[:40].copy()
    aggregated = model.get_attention(adata, batch_size=7)
    np.testing.assert_allclose(aggregated, brute_force_attention(model, adata, layer=-1), atol=2e-3)


def test_attention_grn_writes_matrices_per_group_and_received(fitted):
    model, adata = fitted
    bf.tl.attention_grn(adata, model, groupby="cell_type", top_k=None, min_detection=0)
    overall = adata.varp["bioformers_attention"]
    assert overall.shape == (adata.n_vars, adata.n_vars) and overall.dtype == np.float32
    groups = adata.obs["cell_type"].cat.categories
    for group in groups:
        cells = np.flatnonzero(adata.obs["cell_type"] == group)
        np.testing.assert_allclose(adata.varp[f"bioformers_attention_{group}"], model.get_attention(adata, cells))
    assert not np.allclose(
        adata.varp[f"bioformers_attention_{groups[0]}"], adata.varp[f"bioformers_attention_{groups[1]}"]
    )
    np.testing.assert_allclose(adata.var["bioformers_attention_received"], overall.sum(axis=0), rtol=1e-6)
    params = adata.uns["bioformers_attention"]["params"]
    assert params["groupby"] == "cell_type" and list(params["groups"]) == list(groups)
    assert "top_k" not in params and params["min_detection"] == 0


def test_attention_grn_keep_heads_and_n_cells(fitted):
    model, adata = fitted
    bf.tl.attention_grn(adata, model, keep_heads=True, n_cells=50, seed=1)
    heads = adata.varp["bioformers_attention"]
    assert heads.shape == (adata.n_vars, adata.n_vars, 2)
    chosen = np.sort(np.random.default_rng(1).choice(adata.n_obs, 50, replace=False))
    np.testing.assert_allclose(heads.mean(-1), model.get_attention(adata, chosen), atol=1e-6)
    assert adata.uns["bioformers_attention"]["params"]["n_cells"] == 50


def test_attention_grn_layer_counts_from_the_end_and_is_checked(fitted):
    model, adata = fitted
    first = bf.tl.attention_grn(adata, model, layer=0, copy=True).varp["bioformers_attention"]
    last = bf.tl.attention_grn(adata, model, layer=-1, copy=True).varp["bioformers_attention"]
    np.testing.assert_array_equal(first, last)  # the tiny model has one layer: 0 and -1 are the same block
    with pytest.raises(ValueError, match="layers"):
        bf.tl.attention_grn(adata, model, layer=1)


def _many_groups(adata):
    adata.obs["many"] = pd.Categorical([f"g{i % 60}" for i in range(adata.n_obs)])


def _empty_group(adata):
    adata.obs["with_empty"] = pd.Categorical(
        adata.obs["cell_type"].astype(str), categories=["none", "type_0", "type_1", "type_2"]
    )


@pytest.mark.parametrize(
    ("prepare", "kwargs", "match"),
    [
        (lambda a: None, {"groupby": "nope"}, "groupby"),
        (_many_groups, {"groupby": "many"}, "60 groups"),
        (_empty_group, {"groupby": "with_empty"}, "'none'.*no cells"),
        (lambda a: None, {"n_cells": 0}, "n_cells"),
    ],
    ids=["missing column", "too many groups", "empty group", "no cells"],
)
def test_attention_grn_bad_input_raises_before_writing(fitted, snapshot, assert_unchanged, prepare, kwargs, match):
    model, adata = fitted
    prepare(adata)
    before = snapshot(adata)
    with pytest.raises((KeyError, ValueError), match=match):
        bf.tl.attention_grn(adata, model, **kwargs)
    assert_unchanged(before, adata)


# predict matches genes by name instead (tests/test_gene_alignment.py)
@pytest.mark.parametrize("tool", [bf.tl.attention_grn, bf.tl.gene_embeddings, bf.tl.gene_programs])
def test_tools_reject_other_genes_before_writing(fitted, snapshot, assert_unchanged, tool):
    model, adata = fitted
    other = adata[:, ::-1].copy()
    before = snapshot(other)
    with pytest.raises(ValueError, match="genes"):
        tool(other, model)
    assert_unchanged(before, other)


# --- gene embeddings and programs --------------------------------------------------------------------
def test_gene_embeddings_are_the_model_weights(fitted):
    model, adata = fitted
    bf.tl.gene_embeddings(adata, model)
    np.testing.assert_array_equal(adata.varm["bioformers_genes"], model.module.gene_embedding.weight.detach().numpy())


def test_gene_programs_similarity_and_labels(fitted):
    model, adata = fitted
    bf.tl.gene_programs(adata, model, min_size=3, n_neighbors=5)
    similarity = adata.varp["bioformers_similarity"]
    emb = adata.varm["bioformers_genes"]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(similarity, unit @ unit.T, atol=1e-5)
    np.testing.assert_allclose(np.diag(similarity), 1, atol=1e-5)
    programs = adata.var["bioformers_program"]
    sizes = programs.value_counts()
    assigned = sizes.drop("unassigned", errors="ignore")
    assert (assigned >= 3).all() and len(assigned) >= 1
    assert list(assigned.index) == [str(i) for i in range(len(assigned))]  # numbered by size
    assert list(assigned) == sorted(assigned, reverse=True)
    # a larger min_size can only move genes to "unassigned"
    strict = bf.tl.gene_programs(adata, model, min_size=10, n_neighbors=5, copy=True).var["bioformers_program"]
    assert (strict == "unassigned").sum() >= (programs == "unassigned").sum()


def test_gene_programs_reads_stored_embeddings(fitted):
    model, adata = fitted
    with pytest.raises(KeyError, match="gene_embeddings"):
        bf.tl.gene_programs(adata)
    bf.tl.gene_embeddings(adata, model)
    from_varm = bf.tl.gene_programs(adata, n_neighbors=5, copy=True)
    from_model = bf.tl.gene_programs(adata, model, n_neighbors=5, copy=True)
    assert (from_varm.var["bioformers_program"] == from_model.var["bioformers_program"]).all()


def test_everything_written_survives_h5ad(fitted, tmp_path):
    model, adata = fitted
    bf.tl.predict(adata, model, mask_ratio=0.5)
    bf.tl.attention_grn(adata, model, groupby="cell_type")
    bf.tl.gene_programs(adata, model, n_neighbors=5)
    path = tmp_path / "genes.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for key in ("bioformers_predicted", "bioformers_predicted_bins"):
        np.testing.assert_array_equal(back.layers[key], adata.layers[key])
    for key in adata.varp:
        assert sparse.issparse(back.varp[key]) == sparse.issparse(adata.varp[key])
        np.testing.assert_array_equal(_dense(back.varp[key]), _dense(adata.varp[key]))
    for key in ("bioformers_attention_received", "bioformers_attention_detected"):
        np.testing.assert_array_equal(back.var[key], adata.var[key])
    pd.testing.assert_frame_equal(
        back.varm["bioformers_attention_detected"], adata.varm["bioformers_attention_detected"]
    )
    pd.testing.assert_series_equal(back.var["bioformers_program"], adata.var["bioformers_program"])
    assert back.uns["bioformers_attention"]["params"]["groupby"] == "cell_type"


def _dense(matrix):
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)
