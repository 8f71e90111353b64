"""Property-based tests of binning and tokenisation: random sparse counts of any shape give valid tokens.

Matrices are drawn from a handful of parameters (shape, density, largest count, dtype, empty
rows, a seed), so hypothesis explores and shrinks over those while numpy fills in the values.
"""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

import bioformers as bf
from bioformers.data import cell_uniforms, mask_positions, n_masked, prediction_masks, select_genes
from bioformers.pp._tokens import bin_matrix

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = [np.float32, np.float64, np.int32, np.int64]
# from single counts to counts far above any real library size
LARGEST = [1, 3, 8, 100, 10**4, 10**6, 2**31 - 1]


@st.composite
def count_matrices(draw, *, max_obs: int = 30, max_vars: int = 30):
    """A sparse CSR matrix of non-negative whole counts, any shape, possibly with all-zero rows."""
    n_obs = draw(st.integers(1, max_obs))
    n_vars = draw(st.integers(1, max_vars))
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]))
    largest = draw(st.sampled_from(LARGEST))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # a mix of small and large values, as in real data: most counts are small
    values = np.where(rng.random((n_obs, n_vars)) < 0.7, rng.integers(1, 4, (n_obs, n_vars)), 0)
    values = np.maximum(values, rng.integers(0, largest, (n_obs, n_vars), endpoint=True)).astype(np.float64)
    values[rng.random((n_obs, n_vars)) >= density] = 0
    if n_obs > 1 and draw(st.booleans()):
        values[rng.random(n_obs) < 0.3] = 0
    return sparse.csr_matrix(values.astype(dtype))


def _dense(X) -> np.ndarray:
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


def _check_bins(X, binned, *, upper: int | None = None) -> np.ndarray:
    """Bins are int16 CSR of X's shape, zeros exactly where X is zero, every nonzero in 1..upper."""
    assert sparse.issparse(binned) and binned.format == "csr"
    assert binned.dtype == np.int16 and binned.shape == X.shape
    bins, counts = _dense(binned).astype(np.int64), _dense(X)
    np.testing.assert_array_equal(bins > 0, counts > 0)  # zeros stay bin 0, every count gets a bin >= 1
    assert (bins >= 0).all()
    if upper is not None:
        assert bins.max(initial=0) <= upper
    return bins


# --- binning ----------------------------------------------------------------------------------------
@SETTINGS
@given(X=count_matrices(), normalize=st.booleans(), cap=st.sampled_from([None, 1, 10, 100]))
def test_value_bins_are_valid_and_ordered(X, normalize, cap):
    binned, target_sum = bin_matrix(X, method="value", normalize=normalize, n_bins=cap)
    bins = _check_bins(X, binned, upper=cap)
    counts = _dense(X).astype(np.float64)
    assert (target_sum is None) == (not normalize)
    if not normalize:
        # exact small counts; larger counts never get a smaller bin
        small = (counts > 0) & (counts <= 8)
        np.testing.assert_array_equal(bins[small], np.minimum(counts[small], cap or np.inf))
        order = np.argsort(counts[counts > 0], kind="stable")
        assert (np.diff(bins[counts > 0][order]) >= 0).all()


@SETTINGS
@given(X=count_matrices(), n_bins=st.integers(1, 60))
def test_segment_bins_are_valid_and_rank_each_cell(X, n_bins):
    binned, target_sum = bin_matrix(X, method="segment", n_bins=n_bins)
    bins = _check_bins(X, binned, upper=n_bins)
    assert target_sum is None
    counts = _dense(X).astype(np.float64)
    for row_bins, row in zip(bins, counts, strict=True):
        expressed = row > 0
        if expressed.any():
            assert row_bins[expressed].max() == n_bins  # the cell's largest values are in the top bin
            order = np.argsort(row[expressed], kind="stable")
            assert (np.diff(row_bins[expressed][order]) >= 0).all()
            for value in np.unique(row[expressed]):  # ties share a bin
                assert np.unique(row_bins[row == value]).size == 1


@SETTINGS
@given(X=count_matrices(), method=st.sampled_from(["value", "segment"]))
def test_rows_are_binned_on_their_own(X, method):
    """A row's bins do not depend on the other rows (given the scale), so chunks bin like the whole."""
    whole, target_sum = bin_matrix(X, method=method)
    half = X.shape[0] // 2
    parts = [
        bin_matrix(X[rows], method=method, target_sum=target_sum)[0] for rows in (slice(0, half), slice(half, None))
    ]
    np.testing.assert_array_equal(_dense(sparse.vstack(parts)), _dense(whole))


@SETTINGS
@given(X=count_matrices(), method=st.sampled_from(["value", "segment"]), dense=st.booleans())
def test_pp_bin_takes_any_shape_or_says_why_not(X, method, dense):
    adata = ad.AnnData(X=X.toarray() if dense else X)
    if (np.asarray(X.sum(axis=1)).ravel() == 0).any():
        with pytest.raises(ValueError, match="with no counts"):
            bf.pp.bin(adata, method=method)
        assert "bioformers_binned" not in adata.layers
        return
    bf.pp.bin(adata, method=method)
    binned = adata.layers["bioformers_binned"]
    record = adata.uns["bioformers_binned"]
    bins = _check_bins(X, binned, upper=record["n_tokens"] - 1)
    assert bins.max() >= 1
    sparse_binned = bf.pp.bin(ad.AnnData(X=sparse.csr_matrix(X)), method=method, copy=True)
    np.testing.assert_array_equal(_dense(sparse_binned.layers["bioformers_binned"]), bins)


# --- tokenisation ---------------------------------------------------------------------------------------
@st.composite
def bin_batches(draw):
    """Dense integer bins (cells x genes) as the data loader hands them out, with all-zero cells."""
    X = draw(count_matrices(max_obs=12, max_vars=40))
    binned, _ = bin_matrix(X, method="value", normalize=False, n_bins=draw(st.sampled_from([3, 20, 200])))
    return torch.from_numpy(binned.toarray().astype(np.int64))


@SETTINGS
@given(bins=bin_batches(), n_genes=st.integers(1, 50), random=st.booleans(), data=st.data())
def test_select_genes_gives_valid_sequences(bins, n_genes, random, data):
    n_cells, n_all = bins.shape
    include = None
    if n_all > n_genes and data.draw(st.booleans()):
        # at most n_genes genes per cell, as callers guarantee
        include = torch.zeros_like(bins, dtype=torch.bool)
        for cell in range(n_cells):
            chosen = data.draw(st.lists(st.integers(0, n_all - 1), max_size=n_genes, unique=True))
            include[cell, chosen] = True
    genes, values = select_genes(bins, n_genes, random=random, include=include)
    length = min(n_genes, n_all)
    assert genes.shape == values.shape == (n_cells, length)
    assert ((genes >= 0) & (genes < n_all)).all()
    assert (genes.diff(dim=1) > 0).all()  # ascending, hence no gene twice
    assert torch.equal(values, bins.gather(1, genes))
    for cell in range(n_cells):
        chosen = set(genes[cell].tolist())
        expressed = set(bins[cell].nonzero().flatten().tolist())
        if include is not None:
            assert set(include[cell].nonzero().flatten().tolist()) <= chosen
        elif len(expressed) <= length:
            assert expressed <= chosen
        else:
            assert chosen <= expressed
    if not random:
        assert torch.equal(select_genes(bins, n_genes, random=False, include=include)[0], genes)


@SETTINGS
@given(
    bins=bin_batches(),
    mask_ratio=st.floats(0.01, 1.0),
    nonzero_ratio=st.floats(0.0, 1.0),
    random=st.booleans(),
)
def test_mask_positions_masks_exactly_n_masked_per_cell(bins, mask_ratio, nonzero_ratio, random):
    mask = mask_positions(bins, mask_ratio, nonzero_ratio, random=random)
    length = bins.shape[1]
    n_mask = n_masked(length, mask_ratio)
    assert mask.shape == bins.shape and mask.dtype == torch.bool
    assert 1 <= n_mask <= length
    assert (mask.sum(dim=1) == n_mask).all()
    n_nonzero = (bins > 0).sum(dim=1)
    want = int(torch.round(torch.tensor(n_mask) * nonzero_ratio))  # in float32, as the masking computes it
    for cell in range(bins.shape[0]):
        nonzero = int(n_nonzero[cell])
        take_zero = min(n_mask - min(want, nonzero), length - nonzero)
        assert int((mask[cell] & (bins[cell] > 0)).sum()) == min(n_mask - take_zero, nonzero)
    if not random:
        # fixed by each cell's own values: the same alone as in the batch
        alone = torch.cat(
            [mask_positions(bins[i : i + 1], mask_ratio, nonzero_ratio, random=False) for i in range(len(bins))]
        )
        assert torch.equal(alone, mask)


@SETTINGS
@given(bins=bin_batches(), n_genes=st.integers(1, 50), mask_ratio=st.floats(0.05, 0.99))
def test_prediction_masks_hide_each_sequence_gene_exactly_once(bins, n_genes, mask_ratio):
    masks = prediction_masks(bins, n_genes, mask_ratio)
    assert len(masks) == math.ceil(1 / mask_ratio - 1e-9)
    stacked = torch.stack(masks).long()
    assert all(mask.shape == bins.shape and mask.dtype == torch.bool for mask in masks)
    genes, _ = select_genes(bins, n_genes, random=False)
    in_sequence = torch.zeros_like(bins, dtype=torch.bool).scatter(1, genes, True)
    assert torch.equal(stacked.sum(dim=0), in_sequence.long())  # disjoint, and together the whole sequence
    sizes = stacked.sum(dim=2)  # (masks, cells): groups of about equal size
    assert (sizes.max(dim=0).values - sizes.min(dim=0).values <= 1).all()


@SETTINGS
@given(bins=bin_batches(), salt=st.integers(0, 10))
def test_cell_uniforms_lie_in_0_1_and_depend_on_the_cell_alone(bins, salt):
    u = cell_uniforms(bins, salt)
    assert u.shape == bins.shape and u.dtype == torch.float32
    assert ((u >= 0) & (u < 1)).all()
    alone = torch.cat([cell_uniforms(bins[i : i + 1], salt) for i in range(len(bins))])
    assert torch.equal(alone, u)
