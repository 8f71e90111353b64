"""A query's genes are matched to the model's by name, never by position (``bioformers.pp._genes``)."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import bioformers as bf
from bioformers.pp._genes import align_genes, gene_key

N_QUERY = 150


@pytest.fixture
def query():
    """Raw counts with exactly the training genes (another seed), a fresh copy per test."""
    return bf.datasets.synthetic(n_obs=N_QUERY, n_vars=40, seed=1)


def _with_extra_genes(adata, n_extra=20, seed=0):
    """``adata`` plus ``n_extra`` expressed genes the model does not know."""
    rng = np.random.default_rng(seed)
    extra = sparse.csr_matrix(rng.poisson(3.0, (adata.n_obs, n_extra)).astype(np.float32))
    var = pd.DataFrame(index=[*adata.var_names, *(f"unknown_{i}" for i in range(n_extra))])
    return ad.AnnData(X=sparse.hstack([adata.X, extra]).tocsr(), obs=adata.obs.copy(), var=var)


def _shuffled(adata, seed=0):
    return adata[:, np.random.default_rng(seed).permutation(adata.n_vars)].copy()


def _by_gene(layer, var_names, genes):
    """Columns of ``layer`` for ``genes``, looked up by name."""
    return pd.DataFrame(layer, columns=list(var_names))[list(genes)].to_numpy()


def _embedding(adata, model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return bf.tl.embed(adata, model, copy=True, **kwargs).obsm["X_bioformers"]


@pytest.fixture
def reference(pretrained, query):
    """The embedding of ``query`` as it is: exactly the model's genes, in order."""
    model, _ = pretrained
    return _embedding(query.copy(), model)


# --- the matching rules, without a model -------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("ENSG00000141510.16", "ENSG00000141510"),
        ("ENSG00000141510", "ENSG00000141510"),
        ("ENSMUSG00000059552.9", "ENSMUSG00000059552"),
        ("ENSG00000228572.7_PAR_Y", "ENSG00000228572_PAR_Y"),
        ("AC000061.1", "AC000061.1"),  # a gene symbol with a dot, not a versioned ID
        ("RP11-34P13.3", "RP11-34P13.3"),
        ("TP53", "TP53"),
        ("Tp53", "Tp53"),  # case matters: mouse and human symbols differ by case
    ],
)
def test_gene_key_strips_only_ensembl_versions(name, key):
    assert gene_key(name) == key


def _var(names, **columns):
    return ad.AnnData(var=pd.DataFrame(columns, index=pd.Index(names, dtype=object)))


def test_alignment_maps_columns_by_name_and_moves_values_exactly():
    model_genes = np.array(["a", "b", "c", "d"])
    query = _var(["x", "c", "a", "y", "b"])  # d missing, x and y unknown
    alignment = align_genes(query, model_genes)
    assert alignment.columns.tolist() == [2, 4, 1, -1]
    assert (alignment.n_found, alignment.coverage, alignment.n_ignored) == (3, 0.75, 2)
    assert alignment.missing.tolist() == ["d"] and not alignment.is_identity
    X = np.array([[9, 3, 1, 7, 0], [0, 0, 5, 2, 4]], dtype=np.float32)
    expected = np.array([[1, 0, 3, 0], [5, 4, 0, 0]], dtype=np.float32)
    for matrix in (X, sparse.csr_matrix(X), sparse.csc_matrix(X)):
        taken = alignment.take(matrix)
        assert sparse.isspmatrix_csr(taken) and taken.dtype == np.float32
        np.testing.assert_array_equal(taken.toarray(), expected)
    put = alignment.put(np.array([[10.0, 20.0, 30.0, 40.0]]), fill=np.nan)
    np.testing.assert_array_equal(put, [[np.nan, 30.0, 10.0, np.nan, 20.0]])


def test_alignment_of_the_model_genes_in_order_is_the_identity():
    genes = np.array(["ENSG00000000001", "ENSG00000000002"])
    alignment = align_genes(_var(["ENSG00000000001.3", "ENSG00000000002.1"]), genes)
    assert alignment.is_identity
    X = sparse.csr_matrix(np.array([[1.0, 2.0]]))
    assert (alignment.take(X) != X).nnz == 0


def test_gene_symbols_column_is_matched_and_its_missing_values_match_nothing():
    query = _var(["ENSG1", "ENSG2", "ENSG3"], feature_name=pd.Categorical(["b", None, "a"]))
    alignment = align_genes(query, np.array(["a", "b", "c"]), gene_symbols="feature_name", min_gene_coverage=0.5)
    assert alignment.columns.tolist() == [2, 0, -1]
    assert alignment.source == "adata.var['feature_name']"


def test_unknown_gene_symbols_column_raises():
    with pytest.raises(KeyError, match=r"`gene_symbols='symbol'` is not a column of `adata.var` \(columns: 'feature"):
        align_genes(_var(["a"], feature_name=["a"]), np.array(["a"]), gene_symbols="symbol")


def test_several_query_genes_for_one_model_gene_is_ambiguous():
    query = _var(["ENSG00000000001.1", "ENSG00000000001.2", "x", "x"])
    with pytest.raises(ValueError, match=r"match one gene of the model: \{'ENSG00000000001': \['ENSG00000000001\.1'"):
        align_genes(query, np.array(["ENSG00000000001", "b"]))
    # duplicates among genes the model does not know are ignored like any unknown gene
    assert align_genes(_var(["a", "x", "x"]), np.array(["a", "b"])).columns.tolist() == [0, -1]


@pytest.mark.parametrize("minimum", [-0.1, 1.5])
def test_min_gene_coverage_must_be_a_fraction(minimum):
    with pytest.raises(ValueError, match=r"`min_gene_coverage` must lie in \[0, 1\]"):
        align_genes(_var(["a"]), np.array(["a"]), min_gene_coverage=minimum)


def test_low_coverage_message_gives_coverage_examples_and_a_better_column():
    model_genes = np.array([f"G{i}" for i in range(10)])
    query = _var([f"ENSG{i:011d}" for i in range(10)], symbol=[f"G{i}" for i in range(10)])
    with pytest.raises(ValueError) as error:
        align_genes(query, model_genes)
    message = str(error.value)
    assert "Only 0 of the model's 10 genes (0.0%) were found in `adata.var_names`" in message
    assert "['G0', 'G1', 'G2', 'G3', 'G4']" in message and "ENSG00000000000" in message
    assert "Other names match more of the model's genes: `gene_symbols='symbol'` (100%)." in message
    assert align_genes(query, model_genes, gene_symbols="symbol").is_identity


# --- with a model: embedding ---------------------------------------------------------------------------
def test_reordered_genes_give_the_same_embedding(pretrained, query, reference):
    model, _ = pretrained
    shuffled = _shuffled(query)
    assert not (shuffled.var_names == query.var_names).all()
    np.testing.assert_array_equal(_embedding(shuffled, model), reference)
    np.testing.assert_array_equal(model.get_latent_representation(shuffled), reference)


def test_extra_genes_are_ignored_and_do_not_change_binning(pretrained, query, reference):
    """Cells are scaled by their totals over the model's genes, so extra genes change no bin."""
    model, _ = pretrained
    bigger = _shuffled(_with_extra_genes(query))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # all model genes found: information, not a warning
        bf.tl.embed(bigger, model)
    np.testing.assert_array_equal(bigger.obsm["X_bioformers"], reference)
    # the bins depend on the model's genes, so none are written into the query's layout
    assert "bioformers_binned" not in bigger.layers


def test_missing_genes_read_as_unexpressed_with_a_warning(pretrained, query):
    model, _ = pretrained
    lacking = query[:, 5:].copy()
    zeroed = query.copy()
    X = zeroed.X.toarray()
    X[:, :5] = 0
    zeroed.X = sparse.csr_matrix(X)
    with pytest.warns(UserWarning, match=r"35 of the model's 40 genes \(87\.5%\).*\['gene_0', 'gene_1'"):
        bf.tl.embed(lacking, model)
    np.testing.assert_array_equal(lacking.obsm["X_bioformers"], _embedding(zeroed, model))


def test_coverage_threshold(pretrained, query, snapshot, assert_unchanged):
    model, _ = pretrained
    half = query[:, :20].copy()
    with pytest.warns(UserWarning, match=r"20 of the model's 40 genes \(50\.0%\)"):
        bf.tl.embed(half, model)  # exactly at the default threshold: accepted
    fewer = query[:, :19].copy()
    before = snapshot(fewer)
    with pytest.raises(ValueError, match=r"Only 19 of the model's 40 genes \(47\.5%\).*below `min_gene_coverage=0\.5`"):
        bf.tl.embed(fewer, model)
    assert_unchanged(before, fewer)
    with pytest.warns(UserWarning, match="19 of the model's 40"):
        bf.tl.embed(fewer, model, min_gene_coverage=0.4)
    assert fewer.obsm["X_bioformers"].shape == (N_QUERY, model.init_params_["non_kwargs"]["n_hidden"])
    with pytest.raises(ValueError, match=r"below `min_gene_coverage=1\.0`"):
        model.get_latent_representation(query[:, 1:].copy(), min_gene_coverage=1.0)


@pytest.mark.parametrize("tool", [bf.tl.embed, bf.tl.predict], ids=["embed", "predict"])
def test_renamed_genes_are_refused_not_read_by_position(pretrained, query, snapshot, assert_unchanged, tool):
    model, _ = pretrained
    query.var_names = [f"GENE{i}" for i in range(query.n_vars)]
    before = snapshot(query)
    with pytest.raises(ValueError, match=r"Only 0 of the model's 40 genes.*never by position"):
        tool(query, model)
    assert_unchanged(before, query)


def test_ensembl_versions_are_ignored(pretrained, query, reference, monkeypatch):
    model, _ = pretrained
    ids = np.array([f"ENSG{i:011d}" for i in range(query.n_vars)])
    monkeypatch.setattr(model, "genes_", ids)  # a model trained on unversioned Ensembl IDs
    query.var_names = [f"{gene}.{i % 4 + 1}" for i, gene in enumerate(ids)]
    np.testing.assert_array_equal(_embedding(_shuffled(query), model), reference)
    model.check_genes(query)  # in order, versions aside: exactly the model's genes


def test_gene_symbols_column(pretrained, query, reference):
    model, _ = pretrained
    query.var["feature_name"] = query.var_names.to_numpy()
    query.var_names = [f"ENSG{i:011d}.2" for i in range(query.n_vars)]
    query = _shuffled(query)
    with pytest.raises(ValueError, match=r"`gene_symbols='feature_name'` \(100%\)"):
        bf.tl.embed(query, model)
    np.testing.assert_array_equal(_embedding(query, model, gene_symbols="feature_name"), reference)


def test_binned_layer_of_a_reordered_query_is_read_by_name(pretrained, query, reference):
    model, _ = pretrained
    binned = bf.pp.bin(query, target_sum=model.binning_["target_sum"], copy=True)
    del binned.X  # only the bins are there to read
    np.testing.assert_array_equal(_embedding(_shuffled(binned), model), reference)


def test_cell_with_counts_only_in_unknown_genes_raises_before_writing(pretrained, query, snapshot, assert_unchanged):
    model, _ = pretrained
    bigger = _with_extra_genes(query)
    X = bigger.X.toarray()
    X[7, :40] = 0
    bigger.X = sparse.csr_matrix(X)
    before = snapshot(bigger)
    with pytest.raises(
        ValueError, match=r"1 cell\(s\) of adata.X have no counts in the model's genes \(e.g. row\(s\) \[7\]"
    ):
        bf.tl.embed(bigger, model)
    assert_unchanged(before, bigger)


# --- with a model: prediction ---------------------------------------------------------------------------
def test_predict_writes_model_genes_by_name_and_nan_for_unknown_genes(pretrained, query):
    model, _ = pretrained
    expected = bf.tl.predict(query, model, copy=True)
    bigger = _shuffled(_with_extra_genes(query))
    bf.tl.predict(bigger, model)
    predicted, bins = bigger.layers["bioformers_predicted"], bigger.layers["bioformers_predicted_bins"]
    assert predicted.shape == bins.shape == bigger.shape
    assert (predicted.dtype, bins.dtype) == (np.float32, np.int16)
    unknown = [g for g in bigger.var_names if g.startswith("unknown_")]
    assert np.isnan(_by_gene(predicted, bigger.var_names, unknown)).all()
    assert (_by_gene(bins, bigger.var_names, unknown) == -1).all()
    for key in ("bioformers_predicted", "bioformers_predicted_bins"):
        np.testing.assert_array_equal(
            _by_gene(bigger.layers[key], bigger.var_names, query.var_names), expected.layers[key]
        )
    assert bigger.uns["bioformers_predicted"]["params"]["genes_found"] == 40


def test_predicted_bins_of_a_query_follow_the_model_genes(pretrained, query):
    model, _ = pretrained
    lacking = _shuffled(query[:, 2:].copy())
    with pytest.warns(UserWarning, match="38 of the model's 40"):
        expected, best = model.get_predicted_bins(lacking)
    assert expected.shape == best.shape == (N_QUERY, 40)


# --- backed ------------------------------------------------------------------------------------------
def test_backed_query_with_other_genes_streams_to_the_same_result(pretrained, query, reference, tmp_path):
    model, _ = pretrained
    bigger = _shuffled(_with_extra_genes(query))
    in_memory = bigger.copy()
    bf.tl.predict(in_memory, model)
    bigger.write_h5ad(tmp_path / "query.h5ad")
    backed = ad.read_h5ad(tmp_path / "query.h5ad", backed="r")
    bf.tl.embed(backed, model, chunk_size=64)
    np.testing.assert_array_equal(backed.obsm["X_bioformers"], reference)
    bf.tl.predict(backed, model, chunk_size=64)
    np.testing.assert_array_equal(backed.layers["bioformers_predicted"], in_memory.layers["bioformers_predicted"])


# --- steps that need exactly the model's genes ------------------------------------------------------------
def test_exact_steps_say_embed_and_predict_align(pretrained, query):
    model, _ = pretrained
    with pytest.raises(ValueError, match=r"lacks 1 of the model's 40 genes.*`bf.tl.embed` and `bf.tl.predict` match"):
        bf.tl.gene_embeddings(query[:, 1:].copy(), model)
    with pytest.raises(ValueError, match=r"needs exactly the model's genes, in the model's order.*model\.genes_"):
        bf.tl.attention_grn(query[:, ::-1].copy(), model)
