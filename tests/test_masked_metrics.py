import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.linear_model import LinearRegression

import bioformers as bf

# Hand example. Masked positions: row 0 all but column 4, row 1 all.
#   expressed (true > 0):  (1->1 ok) (2->3) (9->10) (8->8 ok) | (3->3 ok) (1->0) (10->8)  -> sensitivity 3/7
#   high (true > 8):       (9->10 within 1) | (10->8 off by 2)                            -> HEL 1/2
#     (true >= 8 would add (8->8) and give 2/3; scoring the unmasked (12->12) would too)
#   predicted 0:           (0 true 0) | (1 true 1) (0 true 0)                             -> NPV 2/3
#     (the share of true zeros predicted 0 would be 2/4)
TRUE = np.array([[0, 1, 2, 9, 12, 8], [3, 0, 1, 10, 0, 0]])
PRED = np.array([[0, 1, 3, 10, 12, 8], [3, 1, 0, 8, 0, 2]])
MASK = np.array([[1, 1, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1]], dtype=bool)


def test_sensitivity_hand_example():
    assert bf.metrics.sensitivity(TRUE, PRED, MASK) == pytest.approx(3 / 7)


def test_hel_sensitivity_hand_example():
    assert bf.metrics.hel_sensitivity(TRUE, PRED, MASK, cutoff_bin=8) == pytest.approx(1 / 2)
    # cutoff 7 also counts (8 -> 8): 2 of 3 within one bin
    assert bf.metrics.hel_sensitivity(TRUE, PRED, MASK, cutoff_bin=7) == pytest.approx(2 / 3)


def test_npv_hand_example():
    assert bf.metrics.npv(TRUE, PRED, MASK) == pytest.approx(2 / 3)
    unmask_wrong_zero = MASK.copy()
    unmask_wrong_zero[1, 2] = False  # the only (pred 0, true 1) position
    assert bf.metrics.npv(TRUE, PRED, unmask_wrong_zero) == 1.0


def test_npv_is_nan_without_predicted_zeros():
    assert np.isnan(bf.metrics.npv(TRUE, TRUE + 1, MASK))


def test_metrics_accept_sparse_bins():
    true, pred = sparse.csr_matrix(TRUE), sparse.csc_matrix(PRED)
    assert bf.metrics.sensitivity(true, pred, MASK) == pytest.approx(3 / 7)
    assert bf.metrics.hel_sensitivity(true, PRED, MASK, cutoff_bin=8) == pytest.approx(1 / 2)
    assert bf.metrics.npv(true, pred, MASK) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("true", "pred", "mask", "match"),
    [
        (TRUE, PRED[:, :5], MASK, "shape"),
        (TRUE, PRED, MASK[:, :5], "`mask` has shape"),
        (TRUE, PRED, MASK.astype(int), "expected booleans"),
        (TRUE, PRED, np.zeros_like(MASK), "no True entry"),
        (TRUE - 1, PRED, MASK, "`true_bins` contains negative"),
        (TRUE, PRED - 1, MASK, "`pred_bins` contains negative"),
        (TRUE, PRED + 0.5, MASK, "non-integer"),
        (TRUE, np.where(MASK, np.nan, 0), MASK, "NaN"),
        (TRUE[0], PRED[0], MASK[0], "2-D"),
    ],
)
def test_metric_input_errors(true, pred, mask, match):
    with pytest.raises(ValueError, match=match):
        bf.metrics.sensitivity(true, pred, mask)


def test_metrics_need_positions_of_their_kind():
    only_zeros = np.array([[True, False, False, False, False, False], [False, True, False, False, True, True]])
    with pytest.raises(ValueError, match="true bin > 0"):
        bf.metrics.sensitivity(TRUE, PRED, only_zeros)
    with pytest.raises(ValueError, match="cutoff_bin=12"):
        bf.metrics.hel_sensitivity(TRUE, PRED, MASK, cutoff_bin=12)
    with pytest.raises(ValueError, match="non-negative integer"):
        bf.metrics.hel_sensitivity(TRUE, PRED, MASK, cutoff_bin=-1)


def test_bin_confusion_hand_example():
    true = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 2]])
    pred = np.array([[1, 2, 1, 0, 1], [3, 1, 1, 0, 1]])
    mask = np.ones_like(true, dtype=bool)
    # true bin 1 at 8 positions, predicted 1, 2, 1, 0, 1, 3, 1, 1
    table = bf.metrics.bin_confusion(true, pred, mask)
    assert table.index.name == "predicted_bin"
    assert table.index.tolist() == [0, 1, 2, 3]
    assert table["count"].tolist() == [1, 5, 1, 1]
    assert table["share"].tolist() == pytest.approx([1 / 8, 5 / 8, 1 / 8, 1 / 8])

    mask[0, 1] = False  # hides the only prediction of bin 2: its row stays, with count 0
    table = bf.metrics.bin_confusion(true, pred, mask)
    assert table["count"].tolist() == [1, 5, 0, 1]
    assert table["share"].tolist() == pytest.approx([1 / 7, 5 / 7, 0, 1 / 7])

    # true bin 2: one position, predicted 1
    assert bf.metrics.bin_confusion(true, pred, mask, true_bin=2)["count"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="No masked position has true bin 5"):
        bf.metrics.bin_confusion(true, pred, mask, true_bin=5)


def _random_bins(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(3, size=shape) * rng.binomial(1, 0.5, size=shape)


def test_balanced_mask_counts_per_cell():
    true = np.array(
        [
            [0, 0, 0, 0, 1, 2, 3, 4],  # 4 expressed, 4 not: 3 of each
            [0, 5, 0, 0, 0, 0, 0, 0],  # 1 expressed: 1 of each
            [1, 1, 1, 1, 1, 1, 1, 1],  # nothing unexpressed: none
            [0, 0, 0, 0, 0, 0, 0, 0],  # nothing expressed: none
        ]
    )
    mask = bf.metrics.balanced_mask(true, 3, seed=0)
    assert mask.dtype == bool and mask.shape == true.shape
    assert (mask & (true > 0)).sum(axis=1).tolist() == [3, 1, 0, 0]
    assert (mask & (true == 0)).sum(axis=1).tolist() == [3, 1, 0, 0]


def test_balanced_mask_is_seeded_and_sparse_agrees():
    true = _random_bins((6, 40))
    mask = bf.metrics.balanced_mask(true, 5, seed=3)
    assert np.array_equal(mask, bf.metrics.balanced_mask(true, 5, seed=3))
    assert np.array_equal(mask, bf.metrics.balanced_mask(sparse.csr_matrix(true), 5, seed=3))
    assert not np.array_equal(mask, bf.metrics.balanced_mask(true, 5, seed=4))
    assert ((mask & (true > 0)).sum(axis=1) == 5).all()
    assert ((mask & (true == 0)).sum(axis=1) == 5).all()


def test_balanced_mask_errors():
    with pytest.raises(ValueError, match="n_per_cell"):
        bf.metrics.balanced_mask(TRUE, 0)
    with pytest.raises(ValueError, match="balanced mask is empty"):
        bf.metrics.balanced_mask(np.ones((3, 4), dtype=int), 2)


def test_masked_prediction_scores():
    balanced = np.array([[1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=bool)
    balanced_pred = np.array([[0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]])  # predicted 0: true 0, 1, 0 -> 2/3
    scores = bf.metrics.masked_prediction_scores(
        TRUE, PRED, MASK, cutoff_bin=8, balanced_mask=balanced, balanced_pred=balanced_pred
    )
    assert scores == pytest.approx({"sensitivity": 3 / 7, "hel_sensitivity": 1 / 2, "npv50": 2 / 3})
    assert set(bf.metrics.masked_prediction_scores(TRUE, PRED, MASK, cutoff_bin=8)) == {
        "sensitivity",
        "hel_sensitivity",
    }
    with pytest.raises(ValueError, match="together"):
        bf.metrics.masked_prediction_scores(TRUE, PRED, MASK, cutoff_bin=8, balanced_mask=balanced)


def test_compare_masked_prediction():
    balanced = bf.metrics.balanced_mask(TRUE, 2, seed=0)
    table = bf.metrics.compare_masked_prediction(
        TRUE,
        MASK,
        {"oracle": TRUE, "hand": PRED},
        cutoff_bin=8,
        balanced_mask=balanced,
        balanced_predictions={"hand": np.zeros_like(TRUE), "oracle": TRUE},
    )
    expected = pd.DataFrame(
        {"sensitivity": [1.0, 3 / 7], "hel_sensitivity": [1.0, 1 / 2], "npv50": [1.0, 1 / 2]},
        index=pd.Index(["oracle", "hand"], name="method"),
    )
    # all-zero predictions on a balanced mask: NPV is exactly the share of zeros, 1/2
    pd.testing.assert_frame_equal(table, expected)

    without = bf.metrics.compare_masked_prediction(TRUE, MASK, {"hand": PRED}, cutoff_bin=8)
    assert without.columns.tolist() == ["sensitivity", "hel_sensitivity"]
    with pytest.raises(ValueError, match=r"missing: \['oracle'\]"):
        bf.metrics.compare_masked_prediction(
            TRUE,
            MASK,
            {"oracle": TRUE, "hand": PRED},
            cutoff_bin=8,
            balanced_mask=balanced,
            balanced_predictions={"hand": PRED},
        )
    with pytest.raises(ValueError, match="empty"):
        bf.metrics.compare_masked_prediction(TRUE, MASK, {}, cutoff_bin=8)


@pytest.fixture
def exact_data():
    """Genes 0 and 1 random, gene 2 = gene 0 + 2 * gene 1: with k=2 every gene is exactly linear in the others."""
    rng = np.random.default_rng(0)
    bins = rng.poisson(3, size=(60, 3))
    bins[:, 2] = bins[:, 0] + 2 * bins[:, 1]
    return bins[:50], bins[50:]


def test_linear_baseline_solves_exact_relation(exact_data):
    train, test = exact_data
    model = bf.metrics.LinearBaseline(k=2).fit(train)
    assert model.neighbors_.tolist()[2] in ([0, 1], [1, 0])
    coef = dict(zip(model.neighbors_[2], model.coef_[2], strict=True))
    assert coef[0] == pytest.approx(1.0) and coef[1] == pytest.approx(2.0)
    assert model.intercept_[2] == pytest.approx(0.0, abs=1e-9)

    mask = np.zeros_like(test, dtype=bool)
    mask[:, 2] = True
    pred = model.predict(test, mask)
    assert pred.dtype == np.int64
    assert np.array_equal(pred[:, 2], test[:, 2])
    assert bf.metrics.sensitivity(test, pred, mask) == 1.0
    # with nothing hidden every gene is predicted exactly from the other two
    assert np.array_equal(model.predict(test, np.zeros_like(mask)), test)


def test_linear_baseline_hides_masked_predictors(exact_data):
    train, test = exact_data
    model = bf.metrics.LinearBaseline(k=2).fit(train)
    test = test.copy()
    test[0, 0] = 40  # a masked value the predictor must not read
    mask = np.zeros_like(test, dtype=bool)
    mask[0, [0, 2]] = True
    values = model.predict_values(test, mask)
    assert np.allclose(model.mean_, train.mean(axis=0))
    assert values[0, 2] == pytest.approx(train[:, 0].mean() + 2 * test[0, 1])
    # cell 1 is unmasked: its gene 2 comes from its own gene 0
    assert values[1, 2] == pytest.approx(test[1, 0] + 2 * test[1, 1])


def test_linear_baseline_rounds_and_clips(exact_data):
    train, _ = exact_data
    model = bf.metrics.LinearBaseline(k=2).fit(train)
    assert model.max_bin_ == train.max()
    # gene 0 = g2 - 2 g1 = -10 -> 0; gene 1 = (g2 - g0) / 2 = 50.5 -> training max (20)
    cells = np.array([[0, 5, 0], [0, 0, 101]])
    mask = np.array([[True, False, False], [False, True, False]])
    values = model.predict_values(cells, mask)
    assert values[0, 0] == pytest.approx(-10)
    assert values[1, 1] == pytest.approx(50.5)
    pred = model.predict(cells, mask)
    assert pred[0, 0] == 0 and pred[1, 1] == model.max_bin_


def test_linear_baseline_ranks_by_signed_correlation():
    rng = np.random.default_rng(1)
    g0 = rng.poisson(5, size=80)
    bins = np.column_stack(
        [
            g0,
            20 - g0,  # correlation -1: highest by absolute value, never chosen
            g0 + rng.poisson(2, size=80),  # strongly positive
            rng.poisson(5, size=80),  # noise
            np.full(80, 3),  # constant: correlation 0 with everything
        ]
    )
    model = bf.metrics.LinearBaseline(k=1).fit(bins)
    assert model.neighbors_[0, 0] == 2
    # the constant gene is predicted as its mean: coefficient 0
    assert model.coef_[4, 0] == 0
    assert np.allclose(model.predict_values(bins, np.zeros_like(bins, dtype=bool))[:, 4], 3)


def test_linear_baseline_matches_least_squares():
    bins = _random_bins((30, 7), seed=0)  # seed 0: some solves are singular, some only ill-conditioned
    bins[:, 6] = bins[:, 5]  # duplicated gene: collinear predictors, minimum-norm solution
    bins[:, 4] = 2  # constant gene
    model = bf.metrics.LinearBaseline(k=4).fit(bins)
    with np.errstate(invalid="ignore"):  # the constant gene: correlation 0, as documented
        corr = np.nan_to_num(np.corrcoef(bins.T.astype(float)))
    np.fill_diagonal(corr, -np.inf)
    for gene in range(7):
        predictors = model.neighbors_[gene]
        assert np.allclose(np.sort(corr[gene, predictors]), np.sort(corr[gene])[-4:])
        reference = LinearRegression().fit(bins[:, predictors], bins[:, gene])
        assert np.allclose(model.coef_[gene], reference.coef_, atol=1e-8)
        assert model.intercept_[gene] == pytest.approx(reference.intercept_)


def test_linear_baseline_sparse_matches_dense(exact_data):
    train, test = exact_data
    mask = np.random.default_rng(0).random(test.shape) < 0.3
    dense = bf.metrics.LinearBaseline(k=2).fit(train)
    from_sparse = bf.metrics.LinearBaseline(k=2).fit(sparse.csr_matrix(train))
    assert np.allclose(dense.coef_, from_sparse.coef_)
    assert np.array_equal(dense.predict(test, mask), from_sparse.predict(sparse.csr_matrix(test), mask))


def test_linear_baseline_errors(exact_data):
    train, test = exact_data
    with pytest.raises(ValueError, match="positive integer"):
        bf.metrics.LinearBaseline(k=0)
    with pytest.raises(ValueError, match="smaller than the number of genes"):
        bf.metrics.LinearBaseline(k=3).fit(train)
    with pytest.raises(ValueError, match="negative"):
        bf.metrics.LinearBaseline(k=2).fit(train - 1)
    with pytest.raises(ValueError, match="at least 2 training cells"):
        bf.metrics.LinearBaseline(k=2).fit(train[:1])
    with pytest.raises(ValueError, match="not fitted"):
        bf.metrics.LinearBaseline(k=2).predict(test, np.zeros_like(test, dtype=bool))
    model = bf.metrics.LinearBaseline(k=2).fit(train)
    with pytest.raises(ValueError, match="fitted on 3 genes"):
        model.predict(test[:, :2], np.zeros((len(test), 2), dtype=bool))
    with pytest.raises(ValueError, match="`mask` has shape"):
        model.predict(test, np.zeros((len(test), 2), dtype=bool))
