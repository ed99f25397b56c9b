import math

import numpy as np
import pytest

from mmdemo.metrics import classification_metrics, jsonable, macro_f1, pearson, polarity, regression_metrics


def test_conventions_on_a_hand_worked_example():
    y = np.array([-2.0, -0.4, 0.0, 0.0, 1.2, 2.6])
    p = np.array([-1.0, 0.2, 0.3, -0.1, 1.0, 3.4])
    m = regression_metrics(p, y)
    assert m["mae"] == pytest.approx(np.mean([1.0, 0.6, 0.3, 0.1, 0.2, 0.8]))
    # has-0: truth >= 0 is [F, F, T, T, T, T], pred >= 0 is [F, T, T, F, T, T] -> 4/6
    assert m["acc2_has0"] == pytest.approx(4 / 6)
    # non-0 drops the two zero labels: truth > 0 [F, F, T, T], pred > 0 [F, T, T, T] -> 3/4
    assert m["acc2_non0"] == pytest.approx(3 / 4)
    # acc7: round(clip) -> truth [-2, 0, 0, 0, 1, 3], pred [-1, 0, 0, 0, 1, 3] -> 5/6
    assert m["acc7"] == pytest.approx(5 / 6)
    assert m["n"] == 6
    # CM-BERT's convention: zero labels count as negative: truth > 0 [F, F, F, F, T, T],
    # pred > 0 [F, T, T, F, T, T] -> 4/6; F1 with the arguments swapped (weighted by predicted support):
    # predicted positive (4): tp 2, fp 2, fn 0 -> F1 2/3; predicted negative (2): tp 2, fp 0, fn 2 -> 2/3
    assert m["acc2_zero_neg"] == pytest.approx(4 / 6)
    assert m["f1_zero_neg_swapped"] == pytest.approx(2 / 3)


def test_weighted_f1_matches_a_manual_count():
    y = np.array([1.0, 1.0, 1.0, -1.0])
    p = np.array([1.0, 1.0, -1.0, -1.0])
    # positive class: tp 2 fp 0 fn 1 -> 0.8 (support 3); negative: tp 1 fp 1 fn 0 -> 2/3 (support 1)
    assert regression_metrics(p, y)["f1_non0"] == pytest.approx((0.8 * 3 + 2 / 3) / 4)


def test_perfect_and_constant_predictors():
    y = np.linspace(-3, 3, 50)
    assert regression_metrics(y, y)["corr"] == pytest.approx(1.0)
    assert regression_metrics(y, y)["mae"] == 0
    assert math.isnan(regression_metrics(np.zeros(50), y)["corr"])
    with pytest.raises(ValueError):
        regression_metrics([1.0], [1.0, 2.0])


def test_classification_and_helpers():
    m = classification_metrics([1, 0, -1, 1], [1, 0, 1, 1])
    assert m["accuracy"] == 0.75
    assert macro_f1([1, 1, -1], [1, 1, -1]) == 1.0
    assert list(polarity([-1, -0.2, 0.6])) == [-1, 0, 1]
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert jsonable({"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(2)]}) == {"a": None, "b": 1.5, "c": [2]}
