"""Bad input at every public entry point: a clear error before anything is written, the AnnData unchanged.

The battery crosses entry points with the bad inputs that apply to them. Each case builds a fresh
AnnData, spoils it, snapshots everything it holds, calls the entry point, and checks the error type,
a fragment of its message (what is wrong, which key, how to fix it), and that the AnnData (view,
backed file) still equals its snapshot.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from scipy import sparse

import bioformers as bf

if TYPE_CHECKING:
    from collections.abc import Callable

N_OBS, N_VARS = 200, 40
PERTURBATION_TRAIN = {"n_hidden": 16, "n_layers": 1, "n_heads": 2, "max_epochs": 1, "batch_size": 32}
LIGHTNING = {"enable_progress_bar": False, "accelerator": "cpu"}


# --- where the counts (or bins) of an entry point live --------------------------------------------
def _get(adata, where: str | None):
    return adata.X if where is None else adata.layers[where]


def _set(adata, where: str | None, matrix) -> None:
    if where is None:
        adata.X = matrix
    else:
        adata.layers[where] = matrix


def _dense(adata, where):
    matrix = _get(adata, where)
    return (matrix.toarray() if sparse.issparse(matrix) else np.array(matrix)).astype(np.float64)


# --- bad inputs: each returns the AnnData to call with ----------------------------------------------
def _value(value):
    def spoil(adata, where, tmp_path):
        X = _dense(adata, where)
        X[3, np.flatnonzero(X[3])[0]] = value
        _set(adata, where, sparse.csr_matrix(X))

    return spoil


def _non_integer(adata, where, tmp_path):
    X = _dense(adata, where)
    X[X > 0] += 0.5
    _set(adata, where, sparse.csr_matrix(X))


def _dtype(dtype):
    def spoil(adata, where, tmp_path):
        X = _dense(adata, where)
        _set(adata, where, sparse.csr_matrix(X.astype(bool)) if dtype is bool else X.astype(dtype))

    return spoil


def _cell_without_counts(adata, where, tmp_path):
    X = _dense(adata, where)
    X[5] = 0
    _set(adata, where, sparse.csr_matrix(X))


def _no_cells(adata, where, tmp_path):
    return adata[:0].copy()


def _no_genes(adata, where, tmp_path):
    return adata[:, :0].copy()


def _duplicate_var_names(adata, where, tmp_path):
    adata.var_names = [adata.var_names[1], *adata.var_names[1:]]


def _duplicate_obs_names(adata, where, tmp_path):
    adata.obs_names = [adata.obs_names[1], *adata.obs_names[1:]]


def _view(adata, where, tmp_path):
    return adata[: adata.n_obs // 2]


def _backed(adata, where, tmp_path):
    path = tmp_path / "backed.h5ad"
    adata.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


def _view_of_backed(adata, where, tmp_path):
    return _backed(adata, where, tmp_path)[:50]


def _obs_nan(column):
    def spoil(adata, where, tmp_path):
        values = adata.obs[column].astype(object).to_numpy()
        values[:3] = np.nan
        adata.obs[column] = pd.Categorical(values)

    return spoil


def _many_groups(adata, where, tmp_path):
    adata.obs["many"] = pd.Categorical([f"g{i % 60}" for i in range(adata.n_obs)])


def _nan_gene_embedding(adata, where, tmp_path):
    adata.varm["bioformers_genes"][2, 0] = np.nan


def _without_predicted_bins(adata, where, tmp_path):
    del adata.layers["bioformers_predicted_bins"]


def _unchanged(adata, where, tmp_path):
    return None


@dataclass(frozen=True)
class Bad:
    spoil: Callable
    error: type[Exception]
    match: str
    kwargs: dict = field(default_factory=dict)


COUNTS_ERRORS = {
    "NaN": Bad(_value(np.nan), ValueError, r"NaN or infinite values\. Remove or fill"),
    "inf": Bad(_value(np.inf), ValueError, r"NaN or infinite values\. Remove or fill"),
    "negative": Bad(_value(-1), ValueError, r"negative values.*raw counts"),
    "non-integer": Bad(_non_integer, ValueError, r"non-integer values.*Pass `layer=`"),
    "float16": Bad(_dtype(np.float16), TypeError, r"float16.*Cast it to float32"),
    "object dtype": Bad(_dtype(object), TypeError, r"dtype object; expected numeric counts"),
    "bool dtype": Bad(_dtype(bool), TypeError, r"dtype bool; expected numeric counts"),
    "cell without counts": Bad(_cell_without_counts, ValueError, r"1 cell\(s\) with no counts.*filter_cells"),
}
STRUCTURE_ERRORS = {
    "no cells": Bad(_no_cells, ValueError, r"is empty \(0 cells x"),
    "no genes": Bad(_no_genes, ValueError, r"is empty \(\d+ cells x 0 genes\)"),
    "duplicate var_names": Bad(_duplicate_var_names, ValueError, r"var_names` are not unique.*var_names_make_unique"),
    "duplicate obs_names": Bad(_duplicate_obs_names, ValueError, r"obs_names` are not unique.*obs_names_make_unique"),
}
VIEW = Bad(_view, ValueError, r"is a view.*\.copy\(\)")
BACKED = Bad(_backed, TypeError, r"on disk \(a backed AnnData\).*to_memory\(\)")
VIEW_OF_BACKED = Bad(_view_of_backed, ValueError, r"view of a backed AnnData.*to_memory")
MISSPELLED_LAYER = Bad(_unchanged, KeyError, r"Layer 'count' not found.*Did you mean 'counts'\?", {"layer": "count"})


def _obs_errors(argument: str, column: str, misspelled: str) -> dict[str, Bad]:
    return {
        f"misspelled {argument}": Bad(
            _unchanged,
            KeyError,
            rf"`{argument}='{misspelled}'` is not a column.*Did you mean '{column}'\?",
            {argument: misspelled},
        ),
        f"{argument} with NaN": Bad(
            _obs_nan(column),
            ValueError,
            rf"obs\['{column}'\]` \(`{argument}=`\) has 3 missing value",
            {argument: column},
        ),
    }


# --- entry points -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    call: Callable  # (adata, models, **kwargs)
    base: str  # which AnnData it starts from (see `bases`)
    bad: dict[str, Bad]
    where: str | None = None  # layer holding the values that the bad inputs spoil; None is X
    kwargs: dict = field(default_factory=dict)


def _reads_counts(*extra: dict[str, Bad], backed: Bad | None = BACKED, layer: bool = True) -> dict[str, Bad]:
    """The bad inputs of every entry point that reads counts."""
    bad = COUNTS_ERRORS | STRUCTURE_ERRORS | {"view": VIEW}
    if backed is not None:
        bad["backed"] = backed
    if layer:
        bad["misspelled layer"] = MISSPELLED_LAYER
    for more in extra:
        bad |= more
    return bad


QUERY = {"view of backed": VIEW_OF_BACKED}
GENES_ONLY = {
    "no genes": STRUCTURE_ERRORS["no genes"],
    "duplicate var_names": STRUCTURE_ERRORS["duplicate var_names"],
    "view": VIEW,
}
BINS = {  # setup_anndata checks the binned layer, not counts
    "NaN": Bad(_value(np.nan), ValueError, r"'bioformers_binned' does not hold bin indices.*bf\.pp\.bin"),
    "inf": Bad(_value(np.inf), ValueError, r"'bioformers_binned' does not hold bin indices"),
    "negative": Bad(_value(-1), ValueError, r"'bioformers_binned' does not hold bin indices"),
    "non-integer": Bad(_non_integer, ValueError, r"'bioformers_binned' does not hold bin indices"),
    "float16": COUNTS_ERRORS["float16"],
    "object dtype": COUNTS_ERRORS["object dtype"],
    "bool dtype": COUNTS_ERRORS["bool dtype"],
    "cell without counts": Bad(_cell_without_counts, ValueError, r"1 cell\(s\) with no expressed gene"),
    "misspelled layer": Bad(
        _unchanged, KeyError, r"'bioformers_bined'.*Did you mean 'bioformers_binned'\?", {"layer": "bioformers_bined"}
    ),
}

ENTRIES = {
    "pp.bin": Entry(
        lambda adata, models, **kw: bf.pp.bin(adata, **kw),
        "counts",
        # a backed AnnData works with a layer in memory, so only X on disk is refused
        _reads_counts(backed=Bad(_backed, TypeError, r"adata\.X is on disk \(a backed AnnData\)")),
    ),
    "tl.pretrain": Entry(
        lambda adata, models, **kw: bf.tl.pretrain(adata, **kw),
        "counts",
        # a backed AnnData trains from disk (its bad input: tests/test_backed_training.py)
        _reads_counts(
            _obs_errors("batch_key", "batch", "bach"), _obs_errors("labels_key", "cell_type", "cell_typ"), backed=None
        ),
        kwargs={"n_layers": 1, "n_hidden": 16, "n_heads": 2, "max_epochs": 1, "batch_size": 32} | LIGHTNING,
    ),
    "tl.embed": Entry(
        lambda adata, models, **kw: bf.tl.embed(adata, models["pretrained"], **kw),
        "counts",
        _reads_counts(QUERY, backed=None),
    ),
    "tl.predict": Entry(
        lambda adata, models, **kw: bf.tl.predict(adata, models["pretrained"], **kw),
        "counts",
        _reads_counts(QUERY, backed=None),
    ),
    "tl.grn": Entry(
        lambda adata, models, **kw: bf.tl.grn(adata, models["pretrained"], n_cells=20, **kw),
        "counts",
        _reads_counts(QUERY, _obs_errors("groupby", "cell_type", "cell_typ"), backed=None),
    ),
    "tl.attention_grn": Entry(
        lambda adata, models, **kw: bf.tl.attention_grn(adata, models["pretrained"], **kw),
        "counts",
        _reads_counts(
            QUERY,
            _obs_errors("groupby", "cell_type", "cell_typ"),
            {
                "too many groups": Bad(
                    _many_groups,
                    ValueError,
                    r"has 60 groups, more than `max_groups=50`.*raise `max_groups=`",
                    {"groupby": "many"},
                )
            },
            backed=None,
            layer=False,
        ),
    ),
    "tl.gene_embeddings": Entry(
        lambda adata, models, **kw: bf.tl.gene_embeddings(adata, models["pretrained"], **kw), "counts", GENES_ONLY
    ),
    "tl.gene_programs": Entry(
        lambda adata, models, **kw: bf.tl.gene_programs(adata, **kw),
        "gene_embeddings",
        GENES_ONLY
        | {
            "misspelled key_added": Bad(
                _unchanged,
                KeyError,
                r"varm\['bioformer_genes'\]` not found.*Did you mean 'bioformers_genes'\?",
                {"key_added": "bioformer"},
            ),
            "NaN gene embedding": Bad(_nan_gene_embedding, ValueError, r"varm\['bioformers_genes'\]` hold NaN"),
        },
        kwargs={"n_neighbors": 5},
    ),
    "pp.rank": Entry(
        lambda adata, models, **kw: bf.pp.rank(adata, **kw),
        "counts",
        # ranks do not change when a cell is scaled, so normalised (non-integer) values are allowed
        {k: v for k, v in _reads_counts().items() if k != "non-integer"},
    ),
    "tl.annotate": Entry(
        lambda adata, models, **kw: bf.tl.annotate(adata, models["pretrained"], **{"labels_key": "cell_type"} | kw),
        "counts",
        # cells with a missing label are annotated, not trained on, so only a misspelled labels_key is bad
        _reads_counts(
            QUERY,
            {k: v for k, v in _obs_errors("labels_key", "cell_type", "cell_typ").items() if "NaN" not in k},
            backed=None,
        ),
        kwargs={"max_epochs": 1},
    ),
    "tl.in_silico_perturb": Entry(
        lambda adata, models, **kw: bf.tl.in_silico_perturb(adata, models["pretrained"], "gene_1", **kw),
        "counts",
        _reads_counts(_obs_errors("groupby", "cell_type", "cell_typ")),
        kwargs={"n_random": 2},
    ),
    "tl.train_perturbation": Entry(
        lambda adata, models, **kw: bf.tl.train_perturbation(adata, **kw),
        "screen",
        _reads_counts(_obs_errors("perturbation_key", "perturbation", "perturbaton")),
        kwargs={"perturbation_key": "perturbation"} | PERTURBATION_TRAIN | LIGHTNING,
    ),
    "tl.predict_perturbation": Entry(
        lambda adata, models, **kw: bf.tl.predict_perturbation(models["perturbation"], adata, ["gene_6"], **kw),
        "screen",
        # it only reads the controls, so a view is fine; its perturbation column is the model's
        {k: v for k, v in _reads_counts().items() if k != "view"}
        | {
            "perturbation column with NaN": Bad(
                _obs_nan("perturbation"), ValueError, r"adata_control\.obs\['perturbation'\]` .* missing value"
            )
        },
        kwargs={"n_cells": 10},
    ),
    "BioFormer.setup_anndata": Entry(
        lambda adata, models, **kw: bf.BioFormer.setup_anndata(adata, **kw),
        "binned",
        BINS
        | STRUCTURE_ERRORS
        | {"view": VIEW}
        | _obs_errors("batch_key", "batch", "bach")
        | _obs_errors("labels_key", "cell_type", "cell_typ"),
        where="bioformers_binned",
    ),
}

PLOTS = {  # (call, bad inputs): read keys that bf.tl wrote
    "pl.embedding": (
        lambda adata, **kw: bf.pl.embedding(adata, show=False, **kw),
        {
            "misspelled basis": Bad(
                _unchanged,
                KeyError,
                r"obsm\['X_bioformer'\]` not found.*Did you mean 'X_bioformers'\?",
                {"basis": "X_bioformer"},
            ),
            "misspelled color": Bad(
                _unchanged,
                KeyError,
                r"`color='cell_typ'` is neither.*Did you mean 'cell_type'\?",
                {"color": "cell_typ"},
            ),
            "view": VIEW,
        },
    ),
    "pl.attention": (
        lambda adata, **kw: bf.pl.attention(adata, show=False, **kw),
        {
            "misspelled key_added": Bad(
                _unchanged, KeyError, r"Did you mean 'bioformers_attention'\?", {"key_added": "bioformer"}
            )
        },
    ),
    "pl.grn": (
        lambda adata, **kw: bf.pl.grn(adata, "gene_1", show=False, **kw),
        {
            "misspelled key": Bad(
                _unchanged, KeyError, r"Did you mean 'bioformers_attention'\?", {"key": "bioformers_atention"}
            )
        },
    ),
    "pl.gene_programs": (
        lambda adata, **kw: bf.pl.gene_programs(adata, "0", show=False, **kw),
        {
            "misspelled key_added": Bad(
                _unchanged, KeyError, r"Did you mean 'bioformers_program'\?", {"key_added": "bioformer"}
            )
        },
    ),
    "pl.binning": (
        lambda adata, **kw: bf.pl.binning(adata, show=False, **kw),
        {
            "misspelled key_added": Bad(
                _unchanged, KeyError, r"Did you mean 'bioformers_binned'\?", {"key_added": "bioformer"}
            )
        },
    ),
    "pl.predicted_vs_observed": (
        lambda adata, **kw: bf.pl.predicted_vs_observed(adata, show=False, **kw),
        {
            "missing prediction": Bad(
                _without_predicted_bins,
                KeyError,
                r"bioformers_predicted_bins.*bf\.tl\.predict\(adata, model\)",
            )
        },
    ),
    "pl.generated_vs_real": (  # reads values, not keys: the AnnData stands for both sides
        lambda adata, **kw: bf.pl.generated_vs_real(adata, adata.copy(), show=False, **kw),
        {"NaN": COUNTS_ERRORS["NaN"], "inf": COUNTS_ERRORS["inf"], "misspelled layer": MISSPELLED_LAYER}
        | STRUCTURE_ERRORS
        | _obs_errors("groupby", "cell_type", "cell_typ"),
    ),
    "pl.in_silico": (
        lambda adata, **kw: bf.pl.in_silico(adata, show=False, **kw),
        {"missing results": Bad(_unchanged, KeyError, r"Run `bf\.tl\.in_silico_perturb\(adata, model, genes\)` first")},
    ),
    "pl.history": (
        lambda adata, **kw: bf.pl.history(adata, show=False, **kw),
        {"misspelled key_added": Bad(_unchanged, KeyError, r"Did you mean 'bioformers'\?", {"key_added": "bioformer"})},
    ),
    "pl.perturbation": (
        lambda adata, **kw: bf.pl.perturbation(
            pd.DataFrame(0.0, index=["gene_6"], columns=adata.var_names), adata, "gene_6", show=False, **kw
        ),
        {
            "misspelled perturbation_key": Bad(
                _unchanged, KeyError, r"Did you mean 'perturbation'\?", {"perturbation_key": "perturbaton"}
            )
        },
    ),
}

CASES = [pytest.param(entry, bad, id=f"{entry}-{bad}") for entry, spec in ENTRIES.items() for bad in spec.bad]
PLOT_CASES = [pytest.param(plot, bad, id=f"{plot}-{bad}") for plot, (_, bads) in PLOTS.items() for bad in bads]


# --- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def _screen():
    return bf.datasets.synthetic_perturbation(n_obs=300, n_vars=24, n_programs=2, n_unmeasured=1)


@pytest.fixture(scope="module")
def models(pretrained, _screen):
    perturbation = bf.tl.train_perturbation(
        _screen.copy(),
        perturbation_key="perturbation",
        test_perturbations=["gene_6"],
        **PERTURBATION_TRAIN,
        **LIGHTNING,
    )
    return {"pretrained": pretrained[0], "perturbation": perturbation}


@pytest.fixture
def bases(_counts, _screen, models):
    """Fresh AnnData of each kind an entry point starts from."""

    def counts():
        adata = _counts.copy()
        adata.layers["counts"] = adata.X.copy()
        return adata

    def screen():
        adata = _screen.copy()
        adata.layers["counts"] = adata.X.copy()
        return adata

    def binned():
        adata = counts()
        bf.pp.bin(adata)
        return adata

    def gene_embeddings():
        adata = counts()
        bf.tl.gene_embeddings(adata, models["pretrained"])
        return adata

    def results():
        """Everything the plots read, standing in for what the tools write."""
        adata = binned()
        rng = np.random.default_rng(0)
        adata.obsm["X_bioformers"] = rng.normal(size=(adata.n_obs, 8)).astype(np.float32)
        adata.varp["bioformers_attention"] = rng.random((adata.n_vars, adata.n_vars), dtype=np.float32)
        unit = rng.normal(size=(adata.n_vars, 8))
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        adata.varp["bioformers_similarity"] = unit @ unit.T
        adata.var["bioformers_program"] = pd.Categorical(["0"] * 20 + ["1"] * 20)
        adata.layers["bioformers_predicted_bins"] = adata.layers["bioformers_binned"].toarray()
        adata.uns["bioformers"] = {"history": {"train_loss": [2.0, 1.0], "validation_loss": []}}
        return adata

    return {
        "counts": counts,
        "binned": binned,
        "gene_embeddings": gene_embeddings,
        "screen": screen,
        "results": results,
    }


# --- the battery -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("entry", "bad"), CASES)
def test_bad_input_raises_before_anything_is_written(
    entry, bad, bases, models, tmp_path, deep_snapshot, assert_same_anndata
):
    spec = ENTRIES[entry]
    case = spec.bad[bad]
    adata = bases[spec.base]()
    spoiled = case.spoil(adata, spec.where, tmp_path)
    adata = adata if spoiled is None else spoiled  # an empty AnnData is falsy
    before = deep_snapshot(adata)
    with pytest.raises(case.error, match=case.match):
        spec.call(adata, models, **(spec.kwargs | case.kwargs))
    assert_same_anndata(before, adata)


@pytest.mark.parametrize(("plot", "bad"), PLOT_CASES)
def test_bad_plot_input_raises_before_anything_is_written(
    plot, bad, bases, tmp_path, deep_snapshot, assert_same_anndata
):
    call, bads = PLOTS[plot]
    case = bads[bad]
    adata = bases["screen"]() if plot == "pl.perturbation" else bases["results"]()
    spoiled = case.spoil(adata, None, tmp_path)
    adata = adata if spoiled is None else spoiled
    before = deep_snapshot(adata)
    with pytest.raises(case.error, match=case.match):
        call(adata, **case.kwargs)
    assert_same_anndata(before, adata)


def test_every_public_entry_point_is_in_the_battery():
    # tl.generate reads no AnnData (a model in, a new AnnData out); its bad inputs are in test_decoder.py
    tools = {f"tl.{name}" for name in bf.tl.__all__ if name != "generate"} | {f"pp.{name}" for name in bf.pp.__all__}
    assert tools | {"BioFormer.setup_anndata"} == set(ENTRIES)
    # pl.perturbation_scores reads a table of scores, not an AnnData
    assert {f"pl.{name}" for name in bf.pl.__all__} - {"pl.perturbation_scores"} == set(PLOTS)


# --- what is allowed, and documented as such -------------------------------------------------------------
@pytest.mark.parametrize("method", ["value", "segment"])
def test_genes_without_counts_are_bin_zero_without_a_warning(counts, method, recwarn):
    X = counts.X.toarray()
    X[:, 3] = 0
    counts.X = sparse.csr_matrix(X)
    bf.pp.bin(counts, method=method)
    assert counts.layers["bioformers_binned"][:, 3].nnz == 0
    assert not [w for w in recwarn if "no counts" in str(w.message)]


def test_training_warns_about_genes_without_counts(counts, pretrain_kwargs):
    X = counts.X.toarray()
    X[:, [3, 7]] = 0
    counts.X = sparse.csr_matrix(X)
    with pytest.warns(UserWarning, match=r"2 gene\(s\) with no counts.*filter_genes"):
        bf.tl.pretrain(counts, **(pretrain_kwargs | {"max_epochs": 1}))
    assert "X_bioformers" in counts.obsm


@pytest.mark.parametrize(
    "tool",
    [
        pytest.param(lambda view, model: bf.pp.bin(view, copy=True), id="pp.bin"),
        pytest.param(lambda view, model: bf.tl.embed(view, model, copy=True), id="tl.embed"),
        pytest.param(lambda view, model: bf.tl.predict(view, model, copy=True), id="tl.predict"),
        pytest.param(lambda view, model: bf.tl.gene_embeddings(view, model, copy=True), id="tl.gene_embeddings"),
    ],
)
def test_views_work_with_copy_true_and_stay_untouched(counts, models, tool, deep_snapshot, assert_same_anndata):
    view = counts[:60]
    before = deep_snapshot(view)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ad.ImplicitModificationWarning)
        result = tool(view, models["pretrained"])
    assert isinstance(result, ad.AnnData) and not result.is_view and result.n_obs == 60
    assert_same_anndata(before, view)


def test_predict_perturbation_reads_a_view(_screen, models, deep_snapshot, assert_same_anndata):
    view = _screen[_screen.obs["perturbation"] == "control"]
    before = deep_snapshot(view)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ad.ImplicitModificationWarning)
        predicted = bf.tl.predict_perturbation(models["perturbation"], view, ["gene_6"], n_cells=10)
    assert predicted.shape == (10, _screen.n_vars)
    assert_same_anndata(before, view)


def test_pretrain_writes_no_scvi_bookkeeping_into_the_anndata(counts, pretrain_kwargs):
    model = bf.tl.pretrain(counts, batch_key="batch", **(pretrain_kwargs | {"max_epochs": 1}))
    bf.tl.embed(counts, model)
    bf.tl.predict(counts, model)
    assert not [key for key in counts.uns if key.startswith("_scvi")]
    assert not [column for column in counts.obs if column.startswith("_scvi")]
    assert model.adata is not counts
    # the model's private AnnData shares the matrices: no copy of the counts or the bins
    assert model.adata.X is counts.X
    assert model.adata.layers["bioformers_binned"] is counts.layers["bioformers_binned"]


def test_gene_embeddings_do_not_share_memory_with_the_model(counts, models):
    model = models["pretrained"]
    weights = model.module.gene_embedding.weight.detach().clone()
    bf.tl.gene_embeddings(counts, model)
    counts.varm["bioformers_genes"][:] = 0  # editing the result must not edit the model
    assert torch.equal(model.module.gene_embedding.weight.detach(), weights)


def test_non_integer_values_are_described_and_the_fix_fits_them(counts):
    """Log-normalised data is told to pass raw counts; scaled counts are offered rounding or segment binning."""
    scaled = counts.copy()
    scaled.X = scaled.X * 0.7  # e.g. ambient-corrected counts
    with pytest.raises(
        ValueError, match=r"non-integer values .*e\.g\. 0\.7.*scaled or corrected counts.*rint.*segment"
    ):
        bf.tl.pretrain(scaled)
    lognorm = counts.copy()
    sc.pp.normalize_total(lognorm)
    sc.pp.log1p(lognorm)
    with pytest.raises(ValueError, match=r"looks log-normalised.*Pass `layer=`") as raised:
        bf.tl.pretrain(lognorm)
    assert "segment" not in str(raised.value)
    assert "bioformers_binned" not in scaled.layers and "bioformers_binned" not in lognorm.layers


@pytest.mark.parametrize(
    ("setup", "kwargs", "match"),
    [
        (bf.CellDiffusion.setup_anndata, {"labels_key": "cell_type"}, r"categorical_covariate_keys=\['cell_type'\]"),
        (bf.BioFormer.setup_anndata, {"batchkey": "batch"}, "Did you mean 'batch_key'"),
        (bf.BioFormer.setup_anndata, {"categorical_covariate_keys": ["batch"]}, "bf.CellDiffusion"),
    ],
)
def test_setup_refuses_arguments_of_other_models_up_front(counts, setup, kwargs, match):
    """The scvi-tools habit (`labels_key=` everywhere) gets a message naming our argument, before registration."""
    snapshot = counts.copy()
    with pytest.raises(TypeError, match=match):
        setup(counts, **kwargs)
    assert list(counts.obs.columns) == list(snapshot.obs.columns) and set(counts.uns) == set(snapshot.uns)
