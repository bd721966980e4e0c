import numpy as np
import pytest

from seg4diff.evaluation.metrics import confusion_matrix, summarize


def test_confusion_matrix_and_summary_against_hand_computation():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 1]])
    confusion = confusion_matrix(pred, target, 4)
    expected = np.zeros((4, 4), int)
    expected[0, 0], expected[0, 1] = 1, 1  # GT 0: one right, one called 1
    expected[1, 1] = 3  # GT 1: all three right
    expected[2, 2], expected[2, 0] = 1, 1  # GT 2: one right, one called 0 (the 255 pixel is ignored)
    np.testing.assert_array_equal(confusion, expected)
    result = summarize(confusion)
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 3 / (3 + 4 - 3) = 3/4; class 2: 1 / (2 + 1 - 1) = 1/2;
    # class 3 absent → NaN
    np.testing.assert_allclose(result["iou"], [1 / 3, 3 / 4, 1 / 2, np.nan])
    assert result["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    np.testing.assert_allclose(result["acc"], [1 / 2, 1, 1 / 2, np.nan])
    assert result["macc"] == pytest.approx(2 / 3)
    assert result["pacc"] == pytest.approx(5 / 7)


def test_matrices_accumulate_by_addition():
    rng = np.random.default_rng(0)
    target, pred = rng.integers(0, 3, (2, 5, 5)), rng.integers(0, 3, (2, 5, 5))
    both = confusion_matrix(pred, target, 3)
    assert (both == confusion_matrix(pred[0], target[0], 3) + confusion_matrix(pred[1], target[1], 3)).all()


def test_edge_cases():
    all_ignore = confusion_matrix(np.zeros((3, 3), int), np.full((3, 3), 255), 2)
    assert all_ignore.sum() == 0 and np.isnan(summarize(all_ignore)["miou"])
    one_class = summarize(confusion_matrix(np.ones((2, 2), int), np.ones((2, 2), int), 3))
    assert one_class["miou"] == 1.0 and one_class["pacc"] == 1.0 and np.isnan(one_class["iou"][0])
    predicted_only = summarize(confusion_matrix(np.array([1, 1]), np.array([0, 0]), 2))
    assert predicted_only["iou"].tolist() == [0.0, 0.0]  # class 1 predicted but absent from GT: counts as 0
    assert np.isnan(predicted_only["acc"][1]) and predicted_only["macc"] == 0.0
    with pytest.raises(ValueError, match="prediction holds class ids outside 0..1"):
        confusion_matrix(np.array([5]), np.array([0]), 2)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)
