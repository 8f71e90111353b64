"""``bf.tl.pretrain(adata, init=model)``: continue training a (loaded) model on new data, genes matched by name."""

import numpy as np
import pytest
import torch

import bioformers as bf

FINE_TUNE = {"batch_size": 32, "enable_progress_bar": False, "accelerator": "cpu", "max_epochs": 1, "seed": 0}


@pytest.fixture(scope="module")
def loaded(pretrained, tmp_path_factory):
    """The ``pretrained`` model saved and loaded back without any AnnData, as a shared model is."""
    model, _ = pretrained
    path = tmp_path_factory.mktemp("fine_tuning") / "model"
    model.save(str(path))
    return bf.BioFormer.load(str(path))


@pytest.fixture
def other_data():
    """Other cells with 32 of the model's 40 genes, 3 genes it does not know, in another order."""
    adata = bf.datasets.synthetic(n_obs=120, n_vars=40, seed=3)[:, 5:].copy()
    adata.var_names = [*adata.var_names[:-3], "NEW1", "NEW2", "NEW3"]
    return adata[:, ::-1].copy()


def _weights(model) -> dict:
    return {name: value.detach().clone() for name, value in model.module.state_dict().items()}


def test_fine_tuning_starts_from_the_loaded_weights(loaded, counts):
    """With a learning rate of 0 the network does not move: the fine-tuned model embeds exactly as the loaded one.

    Only the count decoder changes: after training it is fitted to the new cells' embeddings.
    """
    reference = counts.copy()
    bf.tl.embed(reference, loaded)
    model = bf.tl.pretrain(counts, init=loaded, lr=0.0, **FINE_TUNE)
    refitted = {"count_head.weight", "count_head.bias", "log_dispersion"}
    for name, value in _weights(loaded).items():
        if name not in refitted:
            torch.testing.assert_close(model.module.state_dict()[name], value, rtol=0, atol=0, msg=name)
    np.testing.assert_array_equal(counts.obsm["X_bioformers"], reference.obsm["X_bioformers"])
    # the same genes in the model's order: the binned layer is the model's binning of these cells
    np.testing.assert_array_equal(
        counts.layers["bioformers_binned"].toarray(), reference.layers["bioformers_binned"].toarray()
    )


def test_fine_tuning_beats_a_fresh_start_at_the_first_epoch(loaded, counts, pretrain_kwargs):
    """The pretrained weights carry over: the first epoch's loss is below that of a new model of the same size."""
    fine_tuned = bf.tl.pretrain(counts.copy(), init=loaded, **FINE_TUNE)
    sizes = {k: pretrain_kwargs[k] for k in ("n_hidden", "n_layers", "n_heads", "max_seq_len")}
    fresh = bf.tl.pretrain(counts.copy(), **sizes, **FINE_TUNE)
    assert fine_tuned.loss_history()["train_loss"][0] < fresh.loss_history()["train_loss"][0]


def test_fine_tuning_on_other_genes_keeps_the_model_genes(loaded, other_data, tiny_model):
    weights = _weights(loaded)
    with pytest.warns(UserWarning, match=r"32 of the model's 40 genes \(80\.0%\) were found"):
        model = bf.tl.pretrain(other_data, init=loaded, **FINE_TUNE)
    np.testing.assert_array_equal(model.genes_, loaded.genes_)
    assert model.adata.n_vars == loaded.genes_.size
    assert other_data.obsm["X_bioformers"].shape == (120, tiny_model["n_hidden"])
    assert "bioformers_binned" not in other_data.layers, "the model's genes do not fit this AnnData's columns"
    params = other_data.uns["bioformers"]["params"]
    assert params["init"] == "BioFormer of 40 genes" and params["gene_coverage"] == pytest.approx(32 / 40)
    assert params["lr"] == 1e-4 and params["n_hidden"] == tiny_model["n_hidden"]
    # trained: the weights moved; `init` itself did not
    assert not torch.equal(model.module.state_dict()["gene_embedding.weight"], weights["gene_embedding.weight"])
    for name, value in loaded.module.state_dict().items():
        assert torch.equal(value, weights[name]), name
    # the genes it lacked read as unexpressed: their tokens never appear in its training data
    missing = ~np.isin(model.genes_, other_data.var_names)
    assert model.adata.layers["bioformers_binned"][:, missing].nnz == 0


def test_fine_tuning_a_batch_model_maps_batches_by_name(counts, pretrain_kwargs):
    model = bf.tl.pretrain(counts.copy(), batch_key="batch", **(pretrain_kwargs | {"max_epochs": 1}))
    new = counts[counts.obs["batch"] == "batch_1"].copy()
    new.obs["sample"] = new.obs["batch"].astype(str)
    fine_tuned = bf.tl.pretrain(new, init=model, batch_key="sample", **FINE_TUNE)
    codes = np.unique(fine_tuned.adata.obs["_scvi_batch"])
    assert codes.tolist() == [model.condition_categories("batch").index("batch_1")]


BAD_INIT = [
    pytest.param({"n_layers": 3}, ValueError, r"keeps its own tokens, size and objective, so n_layers=3", id="size"),
    pytest.param({"binning": "rank"}, ValueError, r"so binning='rank' cannot apply", id="binning"),
    pytest.param({"batch_key": "batch"}, ValueError, r"trained without one, so it has no batch token", id="batch"),
    pytest.param({"min_gene_coverage": 0.95}, ValueError, r"below `min_gene_coverage=0\.95`", id="coverage"),
    pytest.param({"batch_size": 500}, ValueError, r"batch_size=", id="batch size"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_INIT)
def test_bad_fine_tuning_raises_and_leaves_adata_unchanged(
    loaded, other_data, snapshot, assert_unchanged, kwargs, error, match
):
    before = snapshot(other_data)
    with pytest.raises(error, match=match):
        bf.tl.pretrain(other_data, init=loaded, **(FINE_TUNE | kwargs))
    assert_unchanged(before, other_data)


def test_unknown_batches_and_wrong_init_are_refused(counts, pretrain_kwargs, snapshot, assert_unchanged):
    model = bf.tl.pretrain(counts.copy(), batch_key="batch", **(pretrain_kwargs | {"max_epochs": 1}))
    counts.obs["sample"] = ["batch_9"] * counts.n_obs
    before = snapshot(counts)
    with pytest.raises(ValueError, match=r"categories the model in `init` was not trained with \(\['batch_9'\]\)"):
        bf.tl.pretrain(counts, init=model, batch_key="sample", **FINE_TUNE)
    with pytest.raises(TypeError, match=r"`init` must be a trained BioFormer or BioFormerDecoder"):
        bf.tl.pretrain(counts, init="model/", **FINE_TUNE)
    with pytest.raises(ValueError, match=r"read from disk \(backed, or several\) and with `init=`"):
        bf.tl.pretrain(counts, gene_symbols="gene_ids", **FINE_TUNE)
    assert_unchanged(before, counts)
