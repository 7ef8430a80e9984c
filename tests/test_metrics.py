import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score

from dmgrd_edge.metrics import auroc, evaluate_all, f1_max, pro_auc, pro_curve


def test_auroc_hand_cases():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts half
    assert auroc([0, 0, 1], [0.1, 0.3, 0.2]) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + labels, 1)
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.fault("evaluation labels of one class only")
def test_auroc_needs_both_classes():
    with pytest.raises(ValueError, match="both"):
        auroc([1, 1], [0.1, 0.2])


def test_pro_hand_case():
    # one image, two regions of different size (2 px and 1 px); 5 normal pixels
    masks = np.array([[[1, 1, 0, 0], [0, 0, 0, 1]]], bool)
    maps = np.array([[[0.9, 0.1, 0.5, 0.4], [0.3, 0.2, 0.0, 0.8]]])
    fpr, pro = pro_curve(masks, maps)
    # thresholds 0.9, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.2, 0.4, 0.6, 0.8, 0.8, 1.0])
    np.testing.assert_allclose(pro, [0, 0.25, 0.75, 0.75, 0.75, 0.75, 0.75, 1.0, 1.0])
    # area up to FPR 0.3: 0.75 over [0, 0.3] -> 0.75 after normalisation
    assert pro_auc(masks, maps, 0.3) == pytest.approx(0.75)
    # full range: 0.75 over [0, 0.8], then 1.0 over [0.8, 1.0]
    assert pro_auc(masks, maps, 1.0) == pytest.approx(0.8)


def test_pro_perfect_and_limits():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:5, 2:5] = masks[1, 8:12, 1:3] = True
    maps = rng.random(masks.shape) * 0.5 + masks
    assert pro_auc(masks, maps, 0.3) == pytest.approx(1.0)
    assert pro_auc(masks, -maps, 0.3) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="limit"):
        pro_auc(masks, maps, 0.0)


def test_f1_max_matches_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + labels
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best, threshold = f1_max(labels, scores)
    assert best == pytest.approx(f1[:-1].max())
    assert threshold == pytest.approx(thresholds[np.argmax(f1[:-1])])


def test_evaluate_all_keys():
    masks = np.zeros((2, 8, 8), bool)
    masks[1, 2:4, 2:4] = True
    maps = masks.astype(float) + 0.01
    result = evaluate_all([0, 1], [0.1, 0.9], masks, maps)
    assert set(result) == {"i_auroc", "i_f1_max", "i_f1_threshold", "p_auroc", "pro_30", "pro_full"}
    assert result["i_auroc"] == 1.0 and result["p_auroc"] == 1.0
