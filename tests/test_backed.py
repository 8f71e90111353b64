"""Embedding and prediction of backed AnnData, read and binned in chunks."""

import hashlib

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import bioformers as bf
from bioformers.data import _stream as stream
from bioformers.data import binned_batches

N_QUERY = 150


@pytest.fixture
def query():
    """Raw counts of a query with the training genes (other seed), a fresh in-memory copy per test."""
    return bf.datasets.synthetic(n_obs=N_QUERY, n_vars=40, seed=1)


def _write(adata, tmp_path, name="query.h5ad"):
    path = tmp_path / name
    adata.write_h5ad(path)
    return path


@pytest.fixture
def backed(query, tmp_path):
    """``query`` written to disk and opened with ``backed="r"``."""
    return ad.read_h5ad(_write(query, tmp_path), backed="r")


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _keys(adata) -> dict:
    return {
        "layers": sorted(adata.layers.keys()),
        "obsm": sorted(adata.obsm.keys()),
        "uns": sorted(adata.uns.keys()),
        "varm": sorted(adata.varm.keys()),
    }


def _streamed_bins(model, adata, **kwargs) -> np.ndarray:
    batches = binned_batches(adata, binning=model.binning_, binned_layer="bioformers_binned", batch_size=16, **kwargs)
    return np.concatenate(list(batches))


def _binned_like_training(model, adata):
    return bf.pp.bin(adata, target_sum=model.binning_["target_sum"], copy=True)


# --- embedding ------------------------------------------------------------------------------------
def test_backed_embed_equals_in_memory_embed(pretrained, query, tmp_path):
    model, _ = pretrained
    path = _write(query, tmp_path)
    digest = _digest(path)
    backed = ad.read_h5ad(path, backed="r")
    bf.tl.embed(query, model)
    assert bf.tl.embed(backed, model) is None
    assert backed.obsm["X_bioformers"].dtype == np.float32
    np.testing.assert_array_equal(backed.obsm["X_bioformers"], query.obsm["X_bioformers"])
    # nothing n_cells x n_genes is added to a backed AnnData, and its file is not touched
    assert "bioformers_binned" not in backed.layers
    assert "bioformers_binned" not in backed.uns
    assert backed.isbacked
    backed.file.close()
    assert _digest(path) == digest


@pytest.mark.parametrize(("chunk_size", "batch_size"), [(1, 16), (7, 16), (40, 16), (50, 7), (10_000, 64)])
def test_chunk_size_does_not_change_the_embedding(pretrained, query, backed, chunk_size, batch_size):
    model, _ = pretrained
    expected = model.get_latent_representation(_binned_like_training(model, query))
    streamed = model.get_latent_representation(backed, chunk_size=chunk_size, batch_size=batch_size)
    np.testing.assert_array_equal(streamed, expected)


def test_backed_latent_of_indices_equals_rows(pretrained, query, backed):
    model, _ = pretrained
    full = model.get_latent_representation(backed)
    indices = np.array([149, 3, 77, 3, 0, 120])  # unordered, with a repeat, across chunks
    np.testing.assert_array_equal(model.get_latent_representation(backed, indices=indices, chunk_size=2), full[indices])


def test_training_data_streamed_reproduces_pretrain(pretrained, counts, tmp_path):
    model, adata = pretrained
    backed = ad.read_h5ad(_write(counts, tmp_path), backed="r")
    bf.tl.embed(backed, model, chunk_size=50)
    np.testing.assert_array_equal(backed.obsm["X_bioformers"], adata.obsm["X_bioformers"])


def test_dense_backed_x_is_streamed_too(pretrained, query, tmp_path):
    model, _ = pretrained
    dense = query.copy()
    dense.X = dense.X.toarray()
    backed = ad.read_h5ad(_write(dense, tmp_path), backed="r")
    bf.tl.embed(query, model)
    bf.tl.embed(backed, model, chunk_size=32)
    np.testing.assert_array_equal(backed.obsm["X_bioformers"], query.obsm["X_bioformers"])


def test_backed_counts_layer(pretrained, query, tmp_path):
    model, _ = pretrained
    with_layer = query.copy()
    with_layer.layers["counts"] = with_layer.X.copy()
    with_layer.X = sparse.csr_matrix(np.log1p(with_layer.X.toarray()))
    backed = ad.read_h5ad(_write(with_layer, tmp_path), backed="r")
    bf.tl.embed(query, model)
    bf.tl.embed(backed, model, layer="counts", chunk_size=32)
    np.testing.assert_array_equal(backed.obsm["X_bioformers"], query.obsm["X_bioformers"])


def test_backed_with_binned_layer_reads_it(pretrained, query, tmp_path):
    model, _ = pretrained
    bf.tl.embed(query, model)  # bins into layers["bioformers_binned"]
    binned_only = query.copy()
    binned_only.X = sparse.csr_matrix(binned_only.shape, dtype=np.float32)  # no counts left to bin
    backed = ad.read_h5ad(_write(binned_only, tmp_path), backed="r")
    np.testing.assert_array_equal(model.get_latent_representation(backed), query.obsm["X_bioformers"])


def test_in_memory_without_binned_layer_is_streamed_and_untouched(pretrained, query, snapshot, assert_unchanged):
    model, _ = pretrained
    before = snapshot(query)
    latent = model.get_latent_representation(query, chunk_size=40)
    assert_unchanged(before, query)
    np.testing.assert_array_equal(latent, model.get_latent_representation(_binned_like_training(model, query)))


def test_streaming_holds_one_chunk_at_a_time(pretrained, backed, monkeypatch):
    model, _ = pretrained
    rows = []
    original = stream.bin_matrix

    def spy(block, **kwargs):
        rows.append(block.shape[0])
        return original(block, **kwargs)

    monkeypatch.setattr(stream, "bin_matrix", spy)
    model.get_latent_representation(backed, chunk_size=40, batch_size=16)
    assert rows == [32, 32, 32, 32, 22]  # at most 40 cells, in whole batches of 16


def test_embedding_of_a_backed_anndata_is_saved_by_write(pretrained, backed):
    model, _ = pretrained
    bf.tl.embed(backed, model)
    embedding = backed.obsm["X_bioformers"]
    backed.write()  # anndata writes the in-memory fields back into the file
    read = ad.read_h5ad(backed.filename)
    np.testing.assert_array_equal(read.obsm["X_bioformers"], embedding)
    assert (read.X != backed.X[:]).nnz == 0


# --- binning on the training scale -----------------------------------------------------------------
def test_pretrain_records_target_sum_and_the_model_keeps_it(pretrained, counts, tmp_path):
    model, adata = pretrained
    target_sum = adata.uns["bioformers_binned"]["params"]["target_sum"]
    assert target_sum == pytest.approx(counts.X.sum(axis=1).mean())
    assert model.binning_["target_sum"] == target_sum
    model.save(tmp_path / "model")
    loaded = bf.BioFormer.load(tmp_path / "model", adata=adata.copy())
    assert loaded.binning_["target_sum"] == target_sum


def test_streamed_bins_use_the_training_target_sum(pretrained, query, backed):
    model, _ = pretrained
    expected = _binned_like_training(model, query)
    np.testing.assert_array_equal(
        _streamed_bins(model, backed, chunk_size=20), expected.layers["bioformers_binned"].toarray()
    )
    # on its own scale the query would be binned differently: the training scale matters
    own_scale = bf.pp.bin(query, copy=True).layers["bioformers_binned"]
    assert (own_scale != expected.layers["bioformers_binned"]).nnz > 0


def test_model_without_target_sum_bins_on_the_query_mean(pretrained, query, backed, monkeypatch):
    model, _ = pretrained
    old = {k: v for k, v in model.binning_.items() if k != "target_sum"}  # a model trained before it was recorded
    monkeypatch.setattr(model, "binning_", old)
    expected = bf.pp.bin(query, copy=True).layers["bioformers_binned"].toarray()
    np.testing.assert_array_equal(_streamed_bins(model, backed, chunk_size=20), expected)
    in_memory = query.copy()
    bf.tl.embed(in_memory, model)
    assert "target_sum" not in model.binning_
    bf.tl.embed(backed, model, chunk_size=20)
    np.testing.assert_array_equal(backed.obsm["X_bioformers"], in_memory.obsm["X_bioformers"])


# --- prediction -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_ratio", [None, 0.25])
def test_backed_predict_equals_in_memory_predict(pretrained, query, backed, mask_ratio):
    model, _ = pretrained
    bf.tl.predict(query, model, mask_ratio=mask_ratio)
    bf.tl.predict(backed, model, mask_ratio=mask_ratio, chunk_size=40)
    for key in ("bioformers_predicted", "bioformers_predicted_bins"):
        assert backed.layers[key].dtype == query.layers[key].dtype
        np.testing.assert_array_equal(backed.layers[key], query.layers[key])
    assert backed.uns["bioformers_predicted"]["params"]["scale"] == "normalized counts"
    assert "bioformers_binned" not in backed.layers


def test_backed_masked_predictions_equal_in_memory(pretrained, query, backed):
    model, _ = pretrained
    mask = np.zeros(query.shape, dtype=bool)
    mask[:, ::7] = True
    in_memory = model.get_masked_predictions(mask, _binned_like_training(model, query), batch_size=16)
    streamed = model.get_masked_predictions(mask, backed, batch_size=16)
    for a, b in zip(streamed, in_memory, strict=True):
        np.testing.assert_array_equal(a, b)


def test_backed_attention_grn_equals_in_memory(pretrained, query, backed):
    model, _ = pretrained
    bf.tl.attention_grn(query, model)
    bf.tl.attention_grn(backed, model)
    np.testing.assert_array_equal(backed.varp["bioformers_attention"], query.varp["bioformers_attention"])


# --- bad input: raises before anything is written --------------------------------------------------
def _log_normalised(adata):
    adata.X = sparse.csr_matrix(np.log1p(adata.X.toarray()))


def _empty_last_cell(adata):
    X = adata.X.toarray()
    X[-1] = 0
    adata.X = sparse.csr_matrix(X)


def _csc(adata):
    adata.X = sparse.csc_matrix(adata.X)


def _renamed(adata):
    adata.var_names = [f"renamed_{i}" for i in range(adata.n_vars)]


BAD_BACKED = [
    pytest.param(lambda a: a[:, :10].copy(), {}, ValueError, "Only 10 of the model's 40 genes", id="too few genes"),
    pytest.param(_renamed, {}, ValueError, "Only 0 of the model's 40 genes", id="renamed genes"),
    pytest.param(_log_normalised, {}, ValueError, r"non-integer.*Pass `layer=`", id="log-normalised X"),
    pytest.param(None, {"layer": "counts"}, KeyError, "Layer 'counts' not found", id="missing counts layer"),
    pytest.param(_empty_last_cell, {}, ValueError, r"cells 128 to 149\) has 1 cell", id="empty cell in last chunk"),
    pytest.param(_csc, {}, ValueError, "stored on disk as CSC", id="CSC on disk"),
    pytest.param(None, {"copy": True}, ValueError, "copy=True", id="copy"),
    pytest.param(None, {"chunk_size": 0}, ValueError, "chunk_size", id="chunk_size 0"),
]


@pytest.mark.parametrize("tool", [bf.tl.embed, bf.tl.predict], ids=["embed", "predict"])
@pytest.mark.parametrize(("change", "kwargs", "error", "match"), BAD_BACKED)
def test_bad_backed_input_raises_before_writing(pretrained, query, tmp_path, tool, change, kwargs, error, match):
    model, _ = pretrained
    if change is not None:
        query = change(query) or query
    path = _write(query, tmp_path)
    digest = _digest(path)
    backed = ad.read_h5ad(path, backed="r")
    before = _keys(backed)
    with pytest.raises(error, match=match):
        tool(backed, model, batch_size=16, **({"chunk_size": 64} | kwargs))
    assert _keys(backed) == before
    backed.file.close()
    assert _digest(path) == digest


def test_view_of_backed_anndata_raises_before_writing(pretrained, backed):
    model, _ = pretrained
    view = backed[:50]
    with pytest.raises(ValueError, match=r"view of a backed AnnData.*to_memory"):
        bf.tl.embed(view, model)
    assert "X_bioformers" not in backed.obsm
    # the model method writes nothing, so it takes the view (anndata reads the view's rows)
    np.testing.assert_array_equal(model.get_latent_representation(view), model.get_latent_representation(backed)[:50])


def test_binning_needs_counts_in_memory_and_says_so(backed):
    """Binning writes a layer as large as the data; training from disk bins as it reads (test_backed_training.py)."""
    before = _keys(backed)
    with pytest.raises(TypeError, match=r"on disk \(a backed AnnData\).*to_memory\(\)"):
        bf.pp.bin(backed)
    assert _keys(backed) == before
