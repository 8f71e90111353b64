import math

import numpy as np
import pytest
from anndata import AnnData, read_h5ad
from scipy import sparse

import bioformers as bf

KEY = "bioformers_binned"  # the default name of both the layer and the uns record


def _adata(X) -> AnnData:
    X = np.asarray(X, dtype=np.float64)
    return AnnData(X=sparse.csr_matrix(X))


def _binned(adata: AnnData, key: str = KEY) -> np.ndarray:
    return adata.layers[key].toarray()


@pytest.fixture
def counts() -> np.ndarray:
    """Seeded raw counts with exact small values, large values and ties; no empty cell."""
    rng = np.random.default_rng(0)
    X = rng.negative_binomial(1, 0.3, size=(40, 30)) * rng.integers(1, 40, size=(40, 30))
    X[rng.random(X.shape) < 0.5] = 0
    X[:, 0] += 1
    return X.astype(np.float64)


def _state(adata: AnnData):
    X = adata.X.toarray() if sparse.issparse(adata.X) else np.array(adata.X)
    return set(adata.layers.keys()), set(adata.uns.keys()), X


# --- value method: hand-computed examples ---------------------------------------------------


def test_value_hand_computed():
    # normalize=False, c=8, b=3: 0 -> 0; 1 -> 1; 2, 3, 8 stay exact (8 = floor(8.5));
    # 9  -> 8 + ceil(log2(9/8) * 3)  = 8 + ceil(0.170 * 3 = 0.51) = 9
    # 16 -> 8 + ceil(log2(16/8) * 3) = 8 + ceil(3)               = 11
    # 17 -> 8 + ceil(log2(17/8) * 3) = 8 + ceil(1.087 * 3 = 3.26) = 12
    # 40 -> 8 + ceil(log2(40/8) * 3) = 8 + ceil(2.322 * 3 = 6.97) = 15
    adata = _adata([[0, 1, 2, 3, 8, 9, 16, 17, 40]])
    bf.pp.bin(adata, normalize=False)
    np.testing.assert_array_equal(_binned(adata), [[0, 1, 2, 3, 8, 9, 11, 12, 15]])
    assert adata.uns[KEY]["n_tokens"] == 16


def test_value_rounds_half_up():
    # (0, 1] -> 1; (1, 8] -> floor(x + 0.5): 1.5 -> 2, 2.5 -> 3 (banker's rounding would give 2),
    # 3.49 -> 3, 7.5 -> 8; 8.5 > c -> 8 + ceil(log2(8.5/8) * 3 = 0.26) = 9
    adata = _adata([[0.3, 0.5, 1.0, 1.5, 2.5, 3.49, 7.5, 8.5]])
    bf.pp.bin(adata, normalize=False)
    np.testing.assert_array_equal(_binned(adata), [[1, 1, 1, 2, 3, 3, 8, 9]])


def test_value_cutoff_and_bins_per_octave():
    # c=4, b=1: 3 and 4 exact; 5 -> 4 + ceil(log2(5/4) = 0.32) = 5; 8 -> 4 + 1 = 5;
    # 9 -> 4 + ceil(log2(9/4) = 1.17) = 6; 64 -> 4 + log2(16) = 8
    adata = _adata([[3, 4, 5, 8, 9, 64]])
    bf.pp.bin(adata, normalize=False, cutoff=4, bins_per_octave=1)
    np.testing.assert_array_equal(_binned(adata), [[3, 4, 5, 5, 6, 8]])
    assert adata.uns[KEY]["params"]["cutoff"] == 4
    assert adata.uns[KEY]["params"]["bins_per_octave"] == 1


def test_value_normalizes_to_mean_total():
    # totals 8, 24, 16 -> mean 16; scale factors 2, 2/3, 1
    # row 0: 8 -> 16 -> 8 + ceil(log2(2) * 3) = 11
    # row 1: 12, 6, 6 -> 8, 4, 4
    # row 2: 1, 15 -> 1, 15 -> 15 = 8 + ceil(log2(15/8) * 3 = 2.72) = 11
    X = [[8, 0, 0], [12, 6, 6], [1, 15, 0]]
    adata = _adata(X)
    bf.pp.bin(adata)
    np.testing.assert_array_equal(_binned(adata), [[11, 0, 0], [8, 4, 4], [1, 11, 0]])
    assert adata.uns[KEY]["params"]["normalize"] is True
    # without normalisation row 0 keeps its raw 8 and row 1 its raw 12 -> 8 + ceil(0.585 * 3) = 10
    unscaled = _adata(X)
    bf.pp.bin(unscaled, normalize=False)
    np.testing.assert_array_equal(_binned(unscaled), [[8, 0, 0], [10, 6, 6], [1, 11, 0]])


def test_value_target_sum_hand_computed():
    # target_sum=8: scale factors 8/8, 8/24, 8/16
    # row 0: 8 -> 8; row 1: 12, 6, 6 -> 4, 2, 2; row 2: 1, 15 -> 0.5 -> 1, 7.5 -> 8 (half up)
    X = [[8, 0, 0], [12, 6, 6], [1, 15, 0]]
    adata = _adata(X)
    bf.pp.bin(adata, target_sum=8)
    np.testing.assert_array_equal(_binned(adata), [[8, 0, 0], [4, 2, 2], [1, 8, 0]])
    assert adata.uns[KEY]["params"]["target_sum"] == 8.0


def test_value_records_the_mean_total_it_used(counts):
    adata = _adata(counts)
    bf.pp.bin(adata)
    target_sum = adata.uns[KEY]["params"]["target_sum"]
    assert type(target_sum) is float
    assert target_sum == counts.sum(axis=1).mean()
    # binning again with the recorded total gives the same bins and the same record
    again = _adata(counts)
    bf.pp.bin(again, target_sum=target_sum)
    assert (again.layers[KEY] != adata.layers[KEY]).nnz == 0
    assert again.uns[KEY]["params"] == adata.uns[KEY]["params"]


def test_rows_binned_apart_on_one_target_sum_equal_rows_binned_together(counts):
    whole = _adata(counts)
    bf.pp.bin(whole)
    target_sum = whole.uns[KEY]["params"]["target_sum"]
    for rows in (slice(0, 7), slice(7, 30), slice(30, 40)):
        part = _adata(counts[rows])
        bf.pp.bin(part, target_sum=target_sum)
        np.testing.assert_array_equal(_binned(part), _binned(whole)[rows])


@pytest.mark.parametrize("kwargs", [{"normalize": False}, {"method": "segment"}], ids=["unscaled", "segment"])
def test_target_sum_not_recorded_when_nothing_is_scaled(counts, kwargs):
    adata = _adata(counts)
    bf.pp.bin(adata, target_sum=100, **kwargs)
    reference = _adata(counts)
    bf.pp.bin(reference, **kwargs)
    assert "target_sum" not in adata.uns[KEY]["params"]
    assert (adata.layers[KEY] != reference.layers[KEY]).nnz == 0


def test_value_n_bins_caps_largest_bin():
    adata = _adata([[0, 1, 2, 3, 8, 9, 16, 17, 40]])
    bf.pp.bin(adata, normalize=False, n_bins=10)
    np.testing.assert_array_equal(_binned(adata), [[0, 1, 2, 3, 8, 9, 10, 10, 10]])
    assert adata.uns[KEY]["n_tokens"] == 11
    assert adata.uns[KEY]["params"]["n_bins"] == 10


def test_value_matches_scalar_reference(counts):
    def reference(x, c=8, b=3):
        if x == 0:
            return 0
        if x <= 1:
            return 1
        if x <= c:
            return math.floor(x + 0.5)
        return math.floor(c + 0.5) + math.ceil((math.log2(x) - math.log2(c)) * b)

    totals = counts.sum(axis=1, keepdims=True)
    scaled = counts * totals.mean() / totals
    adata = _adata(counts)
    bf.pp.bin(adata)
    np.testing.assert_array_equal(_binned(adata), np.vectorize(reference)(scaled))
    assert adata.uns[KEY]["n_tokens"] == _binned(adata).max() + 1


# --- segment method -------------------------------------------------------------------------


def test_segment_hand_computed_with_ties():
    # row 0: nonzeros 5, 5, 1, 3 (n=4); F(1)=1/4, F(3)=2/4, F(5)=4/4 (both 5s count)
    #   n_bins=4:  ceil(1), ceil(2), ceil(4)       -> 1, 2, 4
    #   n_bins=10: ceil(2.5), ceil(5), ceil(10)    -> 3, 5, 10
    # row 1: nonzeros 2, 2, 2, 7, 1 (n=5); F(1)=1/5, F(2)=4/5, F(7)=5/5
    #   n_bins=4:  ceil(0.8), ceil(3.2), ceil(4)   -> 1, 4, 4
    #   n_bins=10: ceil(2), ceil(8), ceil(10)      -> 2, 8, 10
    # row 2: all nonzeros tie at 3, F=1          -> n_bins
    X = [[0, 5, 5, 1, 3, 0], [2, 2, 2, 0, 7, 1], [3, 0, 3, 3, 0, 0]]
    adata = _adata(X)
    bf.pp.bin(adata, method="segment", n_bins=4)
    np.testing.assert_array_equal(_binned(adata), [[0, 4, 4, 1, 2, 0], [4, 4, 4, 0, 4, 1], [4, 0, 4, 4, 0, 0]])
    assert adata.uns[KEY]["n_tokens"] == 5

    bf.pp.bin(adata, method="segment", n_bins=10)
    np.testing.assert_array_equal(_binned(adata), [[0, 10, 10, 3, 5, 0], [8, 8, 8, 0, 10, 2], [10, 0, 10, 10, 0, 0]])
    assert adata.uns[KEY]["n_tokens"] == 11


def test_segment_default_n_bins_and_no_normalisation():
    adata = _adata([[1, 2, 3, 4], [10, 20, 30, 40]])  # same ranks, 10x the counts
    bf.pp.bin(adata, method="segment")
    # F = 1/4 .. 4/4 of 50 bins -> ceil(12.5), 25, ceil(37.5), 50
    np.testing.assert_array_equal(_binned(adata), [[13, 25, 38, 50], [13, 25, 38, 50]])
    assert adata.uns[KEY]["params"]["n_bins"] == 50
    assert adata.uns[KEY]["n_tokens"] == 51


def test_segment_matches_scalar_reference(counts):
    n_bins = 7
    expected = np.zeros(counts.shape, dtype=np.int64)
    for i, row in enumerate(counts):
        nonzero = row[row > 0]
        for j in np.flatnonzero(row):
            expected[i, j] = math.ceil((nonzero <= row[j]).sum() * n_bins / nonzero.size)
    adata = _adata(counts)
    bf.pp.bin(adata, method="segment", n_bins=n_bins)
    np.testing.assert_array_equal(_binned(adata), expected)


def test_segment_accepts_non_integer_values():
    adata = _adata([[0.5, 0.25, 0, 2.0]])
    bf.pp.bin(adata, method="segment", n_bins=3)
    # n=3: F(0.25)=1/3 -> 1, F(0.5)=2/3 -> 2, F(2)=1 -> 3
    np.testing.assert_array_equal(_binned(adata), [[2, 1, 0, 3]])


# --- storage and formats --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["value", "segment"])
def test_csr_csc_dense_identical(counts, method):
    results = []
    for X in (sparse.csr_matrix(counts), sparse.csc_matrix(counts), counts.copy()):
        adata = AnnData(X=X)
        bf.pp.bin(adata, method=method)
        results.append(adata)
    reference = results[0]
    layer = reference.layers[KEY]
    assert isinstance(layer, sparse.csr_matrix)
    assert layer.dtype == np.int16
    for other in results[1:]:
        assert isinstance(other.layers[KEY], sparse.csr_matrix)
        assert other.layers[KEY].dtype == np.int16
        assert (other.layers[KEY] != layer).nnz == 0
        np.testing.assert_array_equal(other.layers[KEY].indices, layer.indices)
        np.testing.assert_array_equal(other.layers[KEY].indptr, layer.indptr)
        assert other.uns[KEY] == reference.uns[KEY]


def test_sparsity_pattern_kept_and_input_untouched():
    X = sparse.csr_matrix(np.array([[0, 3, 0, 1], [2, 0, 5, 0]], dtype=np.float64))
    X.data[0] = 0  # an explicit stored zero: must not become a stored bin
    stored = X.copy()
    adata = AnnData(X=X)
    bf.pp.bin(adata, normalize=False)
    layer = adata.layers[KEY]
    assert layer.nnz == 3
    np.testing.assert_array_equal(layer.toarray() != 0, X.toarray() != 0)
    assert np.all(layer.data > 0)
    assert adata.X.nnz == stored.nnz  # explicit zero still in the input
    np.testing.assert_array_equal(adata.X.data, stored.data)


def test_layer_and_key_added(counts):
    adata = AnnData(X=np.log1p(counts), layers={"counts": sparse.csr_matrix(counts)})
    bf.pp.bin(adata, layer="counts", key_added="raw")
    assert "raw_binned" in adata.layers
    assert KEY not in adata.layers
    assert adata.uns["raw_binned"]["params"]["layer"] == "counts"
    reference = AnnData(X=sparse.csr_matrix(counts))
    bf.pp.bin(reference)
    assert (adata.layers["raw_binned"] != reference.layers[KEY]).nnz == 0


def test_params_record(counts):
    adata = _adata(counts)
    bf.pp.bin(adata)
    params = adata.uns[KEY]["params"]
    assert params["method"] == "value"
    assert params["cutoff"] == 8
    assert params["bins_per_octave"] == 3
    assert params["normalize"] is True
    assert params["target_sum"] == counts.sum(axis=1).mean()
    assert isinstance(params["version"], str)
    # unset options are left out (h5ad cannot store None)
    assert "n_bins" not in params
    assert "layer" not in params
    assert None not in params.values()


def test_copy_returns_new_and_leaves_input(counts):
    adata = _adata(counts)
    layers, uns, X = _state(adata)
    result = bf.pp.bin(adata, copy=True)
    assert isinstance(result, AnnData)
    assert result is not adata
    assert KEY in result.layers
    assert KEY in result.uns
    assert _state(adata)[:2] == (layers, uns)
    np.testing.assert_array_equal(_state(adata)[2], X)
    assert bf.pp.bin(adata) is None
    assert (adata.layers[KEY] != result.layers[KEY]).nnz == 0


@pytest.mark.parametrize("method", ["value", "segment"])
def test_h5ad_round_trip(counts, method, tmp_path):
    adata = AnnData(X=np.log1p(counts), layers={"counts": sparse.csr_matrix(counts)})
    bf.pp.bin(adata, method=method, layer="counts")
    path = tmp_path / "binned.h5ad"
    adata.write_h5ad(path)
    back = read_h5ad(path)
    assert sparse.issparse(back.layers[KEY])
    assert back.layers[KEY].format == "csr"
    assert back.layers[KEY].dtype == np.int16
    assert (back.layers[KEY] != adata.layers[KEY]).nnz == 0
    assert back.uns[KEY]["n_tokens"] == adata.uns[KEY]["n_tokens"]
    assert back.uns[KEY]["params"] == adata.uns[KEY]["params"]


# --- bad input: raises before anything is written --------------------------------------------


def _with(value):
    X = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 4.0]])
    X[0, 1] = value
    return X


@pytest.mark.parametrize(
    ("X", "kwargs", "error", "match"),
    [
        (_with(-1), {}, ValueError, "negative"),
        (_with(np.nan), {}, ValueError, "NaN or infinite"),
        (_with(np.inf), {}, ValueError, "NaN or infinite"),
        (_with(-1), {"method": "segment"}, ValueError, "negative"),
        (_with(np.nan), {"normalize": False}, ValueError, "NaN or infinite"),
        (_with(2.5), {}, ValueError, "non-integer"),
        ([[1, 2, 0], [0, 0, 0]], {}, ValueError, "no counts"),
        ([[1, 2, 0], [0, 0, 0]], {"method": "segment"}, ValueError, "no counts"),
        (_with(2), {"layer": "counts"}, KeyError, "Layer 'counts' not found"),
        (_with(2), {"method": "rank"}, ValueError, "Unknown `method='rank'`"),
        (_with(2), {"n_bins": 0}, ValueError, "n_bins=0"),
        (_with(2), {"method": "segment", "n_bins": 0}, ValueError, "n_bins=0"),
        (_with(2), {"cutoff": 1}, ValueError, "cutoff=1"),
        (_with(2), {"bins_per_octave": 0}, ValueError, "bins_per_octave=0"),
        (_with(2), {"target_sum": 0}, ValueError, "target_sum=0"),
        (_with(2), {"target_sum": -1e4}, ValueError, "target_sum=-10000"),
        (_with(2), {"target_sum": np.nan}, ValueError, "target_sum=nan"),
        (_with(2), {"target_sum": np.inf}, ValueError, "target_sum=inf"),
        (_with(1e6), {"normalize": False, "bins_per_octave": 30000}, ValueError, "int16"),
    ],
)
@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_bad_input_raises_and_leaves_adata(X, kwargs, error, match, fmt):
    X = np.asarray(X, dtype=np.float64)
    adata = AnnData(X=sparse.csr_matrix(X) if fmt == "csr" else X)
    layers, uns, before = _state(adata)
    with pytest.raises(error, match=match):
        bf.pp.bin(adata, **kwargs)
    after = _state(adata)
    assert after[:2] == (layers, uns)
    np.testing.assert_array_equal(after[2], before)


def test_non_integer_allowed_without_normalisation():
    adata = _adata(_with(2.5))
    bf.pp.bin(adata, normalize=False)
    np.testing.assert_array_equal(_binned(adata), [[1, 3, 0], [3, 0, 4]])
