import logging

import anndata as ad
import numpy as np
import pytest
import scvi
from scipy import sparse

import bioformers as bf


def _dense(X):
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def _assert_equal_nested(read, written, where="uns"):
    """Every key and value of ``written`` is in ``read`` (h5ad turns lists into arrays)."""
    if isinstance(written, dict):
        assert set(read) == set(written), where
        for key in written:
            _assert_equal_nested(read[key], written[key], f"{where}[{key!r}]")
    else:
        np.testing.assert_array_equal(np.asarray(read), np.asarray(written), err_msg=where)


# --- what pretrain writes ------------------------------------------------------------------------
def test_pretrain_writes_embedding_binned_layer_and_record(pretrained, pretrain_kwargs):
    model, adata = pretrained
    embedding = adata.obsm["X_bioformers"]
    assert embedding.shape == (adata.n_obs, pretrain_kwargs["n_hidden"])
    assert embedding.dtype == np.float32
    assert np.isfinite(embedding).all()
    np.testing.assert_array_equal(embedding, model.get_latent_representation())

    binned = adata.layers["bioformers_binned"]
    assert sparse.issparse(binned)
    assert np.issubdtype(binned.dtype, np.integer)
    # binned values keep the sparsity pattern of the counts
    np.testing.assert_array_equal(_dense(binned) > 0, _dense(adata.X) > 0)
    assert adata.uns["bioformers_binned"]["params"]["method"] == "value"

    record = adata.uns["bioformers"]
    params = record["params"]
    assert params["seed"] == pretrain_kwargs["seed"]
    assert params["version"] == bf.__version__
    assert params["model"] == "BioFormer"
    assert params["n_hidden"] == pretrain_kwargs["n_hidden"]
    assert params["max_epochs"] == pretrain_kwargs["max_epochs"]
    history = record["history"]
    assert set(history) == {"train_loss", "validation_loss"}
    for values in history.values():
        assert type(values) is list
        assert len(values) == pretrain_kwargs["max_epochs"]
        assert all(type(v) is float and np.isfinite(v) for v in values)
    assert history == model.loss_history()


def test_pretrain_leaves_x_untouched(pretrained, _counts):
    _, adata = pretrained
    np.testing.assert_array_equal(_dense(adata.X), _dense(_counts.X))


def test_key_added_changes_every_key(counts, pretrain_kwargs):
    bf.tl.pretrain(counts, key_added="foo", **(pretrain_kwargs | {"max_epochs": 1}))
    assert counts.obsm["X_foo"].shape == (counts.n_obs, pretrain_kwargs["n_hidden"])
    assert "foo_binned" in counts.layers
    assert "foo_binned" in counts.uns
    assert set(counts.uns["foo"]) == {"params", "history"}
    assert "X_bioformers" not in counts.obsm
    assert "bioformers_binned" not in counts.layers
    assert "bioformers" not in counts.uns
    assert "bioformers_binned" not in counts.uns


def test_everything_written_survives_h5ad(pretrained, tmp_path):
    _, adata = pretrained
    path = tmp_path / "pretrained.h5ad"
    adata.copy().write_h5ad(path)  # writing may convert columns in place; the fixture is shared
    read = ad.read_h5ad(path)
    np.testing.assert_array_equal(read.obsm["X_bioformers"], adata.obsm["X_bioformers"])
    assert read.obsm["X_bioformers"].dtype == adata.obsm["X_bioformers"].dtype
    np.testing.assert_array_equal(_dense(read.layers["bioformers_binned"]), _dense(adata.layers["bioformers_binned"]))
    for key in ("bioformers", "bioformers_binned"):
        _assert_equal_nested(read.uns[key], adata.uns[key], f"uns[{key!r}]")


def test_dense_and_sparse_counts_give_the_same_binned_layer(pretrained, counts, pretrain_kwargs):
    _, adata = pretrained
    counts.X = counts.X.toarray()
    bf.tl.pretrain(counts, **(pretrain_kwargs | {"max_epochs": 1}))
    dense_binned, sparse_binned = counts.layers["bioformers_binned"], adata.layers["bioformers_binned"]
    assert dense_binned.dtype == sparse_binned.dtype
    np.testing.assert_array_equal(_dense(dense_binned), _dense(sparse_binned))
    assert counts.obsm["X_bioformers"].shape == adata.obsm["X_bioformers"].shape


def test_pretrain_uses_a_layer_of_counts(pretrained, counts, pretrain_kwargs):
    _, adata = pretrained
    counts.layers["counts"] = counts.X.copy()
    counts.X = sparse.csr_matrix(np.log1p(counts.X.toarray()))
    bf.tl.pretrain(counts, layer="counts", **(pretrain_kwargs | {"max_epochs": 1}))
    np.testing.assert_array_equal(_dense(counts.layers["bioformers_binned"]), _dense(adata.layers["bioformers_binned"]))
    assert counts.uns["bioformers"]["params"]["layer"] == "counts"


# repeatability with a seed: tests/test_determinism.py


# --- bad input ----------------------------------------------------------------------------------
def _set_value(value):
    def change(adata):
        X = adata.X.toarray()
        X[3, np.flatnonzero(X[3])[0]] = value
        adata.X = sparse.csr_matrix(X)

    return change


def _empty_cell(adata):
    X = adata.X.toarray()
    X[5] = 0
    adata.X = sparse.csr_matrix(X)


def _non_integer(adata):
    adata.X = adata.X * 0.5


def _duplicate_genes(adata):
    adata.var_names = ["gene_1", *adata.var_names[1:].tolist()]


BAD_INPUTS = [
    pytest.param(_set_value(-1.0), {}, ValueError, "negative", id="negative"),
    pytest.param(_set_value(np.nan), {}, ValueError, "NaN", id="nan"),
    pytest.param(_set_value(np.inf), {}, ValueError, "infinite", id="inf"),
    pytest.param(_non_integer, {}, ValueError, "non-integer", id="non-integer"),
    pytest.param(_empty_cell, {}, ValueError, "no counts", id="empty cell"),
    pytest.param(_duplicate_genes, {}, ValueError, "var_names_make_unique", id="duplicate var_names"),
    pytest.param(None, {"layer": "no_such_layer"}, KeyError, "no_such_layer", id="missing layer"),
    pytest.param(None, {"batch_key": "no_such_column"}, KeyError, "no_such_column", id="missing batch_key"),
    pytest.param(None, {"labels_key": "no_such_column"}, KeyError, "no_such_column", id="missing labels_key"),
    pytest.param(None, {"batch_size": 500}, ValueError, "batch_size=", id="fewer cells than a batch"),
    pytest.param(None, {"binning": "ranks"}, ValueError, "binning", id="unknown binning"),
]


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
@pytest.mark.parametrize(("change", "kwargs", "error", "match"), BAD_INPUTS)
def test_bad_input_raises_and_leaves_adata_unchanged(
    counts, pretrain_kwargs, snapshot, assert_unchanged, change, kwargs, error, match, dense
):
    if change is not None:
        change(counts)
    if dense:
        counts.X = counts.X.toarray()
    before = snapshot(counts)
    with pytest.raises(error, match=match):
        bf.tl.pretrain(counts, **(pretrain_kwargs | kwargs))
    assert_unchanged(before, counts)


def test_bad_model_size_raises_and_leaves_adata_unchanged(counts, pretrain_kwargs, snapshot, assert_unchanged):
    before = snapshot(counts)
    with pytest.raises(ValueError, match="multiple of `n_heads`"):
        bf.tl.pretrain(counts, **(pretrain_kwargs | {"n_hidden": 15}))
    assert_unchanged(before, counts)


# --- embed --------------------------------------------------------------------------------------
@pytest.fixture
def query():
    return bf.datasets.synthetic(n_obs=60, n_vars=40, seed=1)


def test_embed_bins_on_the_training_scale_and_writes_embedding(pretrained, pretrain_kwargs, query):
    model, adata = pretrained
    target_sum = adata.uns["bioformers_binned"]["params"]["target_sum"]
    expected = bf.pp.bin(query, target_sum=target_sum, copy=True)
    assert bf.tl.embed(query, model) is None
    binned, expected_binned = query.layers["bioformers_binned"], expected.layers["bioformers_binned"]
    np.testing.assert_array_equal(_dense(binned), _dense(expected_binned))
    embedding = query.obsm["X_bioformers"]
    assert embedding.shape == (query.n_obs, pretrain_kwargs["n_hidden"])
    np.testing.assert_array_equal(embedding, model.get_latent_representation(expected))
    assert query.uns["bioformers_binned"]["params"]["target_sum"] == target_sum


def test_embed_of_training_counts_reproduces_pretrain(pretrained, counts):
    model, adata = pretrained
    bf.tl.embed(counts, model)
    np.testing.assert_array_equal(counts.obsm["X_bioformers"], adata.obsm["X_bioformers"])


def test_embed_copy_leaves_query_untouched(pretrained, query, snapshot, assert_unchanged):
    model, _ = pretrained
    before = snapshot(query)
    result = bf.tl.embed(query, model, copy=True)
    assert isinstance(result, ad.AnnData)
    assert result is not query
    assert result.obsm["X_bioformers"].shape[0] == query.n_obs
    assert "bioformers_binned" in result.layers
    assert_unchanged(before, query)


def _renamed(adata):
    adata.var_names = [f"renamed_{i}" for i in range(adata.n_vars)]
    return adata


@pytest.mark.parametrize(
    ("genes", "match"),
    [
        pytest.param(lambda a: a[:, :10], r"Only 10 of the model's 40 genes \(25\.0%\)", id="too few genes"),
        pytest.param(_renamed, "Only 0 of the model's 40 genes", id="renamed genes"),
    ],
)
@pytest.mark.parametrize("copy", [False, True])
def test_embed_with_too_few_model_genes_raises_before_writing(
    pretrained, query, snapshot, assert_unchanged, genes, match, copy
):
    model, _ = pretrained
    query = genes(query.copy()).copy()
    before = snapshot(query)
    with pytest.raises(ValueError, match=match):
        bf.tl.embed(query, model, copy=copy)
    assert_unchanged(before, query)


def test_embed_with_bad_counts_raises_before_writing(pretrained, query, snapshot, assert_unchanged):
    model, _ = pretrained
    _set_value(-1.0)(query)
    before = snapshot(query)
    with pytest.raises(ValueError, match="negative"):
        bf.tl.embed(query, model)
    assert_unchanged(before, query)


def test_embed_with_key_added_writes_under_that_key(pretrained, query):
    model, _ = pretrained
    bf.tl.embed(query, model, key_added="foo")
    assert query.obsm["X_foo"].shape[0] == query.n_obs


def test_query_calls_log_no_scvi_setup_transfer(pretrained, query):
    # our tools register private AnnData objects on purpose; scvi-tools' INFO line about it is noise to a user
    model, _ = pretrained
    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    scvi_logger = logging.getLogger("scvi")
    scvi_logger.addHandler(handler)
    verbosity = scvi.settings.verbosity
    scvi.settings.verbosity = logging.INFO
    try:
        bf.tl.embed(query, model)
        bf.tl.predict(query, model)
        bf.tl.attention_grn(query, model)
    finally:
        scvi.settings.verbosity = verbosity
        scvi_logger.removeHandler(handler)
    assert "X_bioformers" in query.obsm
    assert not [r for r in records if "not setup with scvi-tools" in r.getMessage()]
    assert scvi_logger.getChild("model.base._base_model").level == logging.NOTSET  # restored


def test_unknown_keyword_is_refused_before_anything_runs(counts, pretrain_kwargs):
    snapshot = counts.copy()
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['n_epochs'\].*'max_epochs'"):
        bf.tl.pretrain(counts, n_epochs=3, **pretrain_kwargs)
    assert set(counts.layers) == set(snapshot.layers) and set(counts.uns) == set(snapshot.uns)
    with pytest.raises(TypeError, match=r"\['key_add'\].*Did you mean 'key_added'"):
        bf.tl.pretrain(counts, key_add="mine", **pretrain_kwargs)
    with pytest.raises(TypeError, match=r"\['n_hiden'\].*Did you mean 'n_hidden'"):
        bf.tl.train_perturbation(counts, perturbation_key="batch", n_hiden=8)


def test_copy_returns_the_results_and_leaves_the_input(counts, pretrain_kwargs):
    view = counts[:120]
    result, _ = bf.tl.pretrain(view, copy=True, **(pretrain_kwargs | {"max_epochs": 1}))
    assert result.obsm["X_bioformers"].shape == (120, pretrain_kwargs["n_hidden"])
    assert "bioformers_binned" in result.layers and "bioformers" in result.uns
    assert "X_bioformers" not in counts.obsm and "bioformers_binned" not in counts.layers
    assert "X_bioformers" not in view.obsm and view.is_view, "the view passed in is left as it was"
