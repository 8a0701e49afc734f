import numpy as np
import pytest
import torch

from cifarapp.evaluate import confusion_matrix, metrics_from_logits

CLASSES = ("a", "b", "c")


def test_confusion_matrix_of_a_hand_made_case():
    true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    pred = [0, 1, 0, 1, 2, 2, 2, 0, 2]
    expected = np.array([[2, 1, 0],
                         [0, 1, 1],
                         [1, 0, 3]])
    assert np.array_equal(confusion_matrix(true, pred, 3), expected)


def test_metrics_from_logits_hand_computed():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    # predictions: 0, 1 (wrong, conf high), 1, 1, 0 (wrong, conf lower), 2
    logits = torch.tensor([[5., 0, 0], [0, 6, 0], [0, 4, 0], [0, 3, 0], [2, 0, 1], [0, 0, 3]])
    result = metrics_from_logits(logits, labels, CLASSES, top_mistakes=5)
    assert result.accuracy == 4 / 6
    assert np.allclose(result.per_class_accuracy, [0.5, 1.0, 0.5])
    assert np.array_equal(result.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert [(m.index, m.true, m.predicted) for m in result.mistakes] == [(1, 0, 1), (4, 2, 0)]
    assert result.mistakes[0].confidence > result.mistakes[1].confidence
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(result.loss - expected_loss) < 1e-6
    assert "66.67%" in result.summary()
    assert result.confusion_text().splitlines()[1].split()[1:] == ["1", "1", "0"]


def test_class_without_images_has_nan_accuracy():
    result = metrics_from_logits(torch.tensor([[1., 0, 0]]), torch.tensor([0]), CLASSES)
    assert result.per_class_accuracy[0] == 1 and np.isnan(result.per_class_accuracy[1])


def test_tta_modes_average_the_views_computed_by_hand():
    import torch.nn.functional as F

    from cifarapp.data import Normalization, to_model_input
    from cifarapp.hardware import Compute
    from cifarapp.inference import TTA_MODES, batched_logits
    from cifarapp.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet").eval()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    x = to_model_input(images, Normalization())
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
    with torch.no_grad():
        plain = model(x)
        mirrored = [(model(v) + model(v.flip(3))) / 2 for v in views]
    expected = {"none": plain, "flip": mirrored[0],
                "flip_translate": (mirrored[0] + (mirrored[1] + mirrored[2]) / 2) / 2}
    fp32 = Compute(torch.device("cpu"), "fp32", channels_last=True, reason="test")
    for mode in TTA_MODES:
        got = batched_logits(model, images, Normalization(), fp32, batch_size=4, tta=mode)
        assert torch.allclose(got, expected[mode], atol=1e-5), mode
    assert not torch.allclose(expected["flip"], expected["flip_translate"])


def _logits_for(true, predicted, n_classes, strength=3.0):
    """Labels and logits whose arg-max is `predicted`, for hand-made confusion matrices."""
    logits = torch.zeros(len(predicted), n_classes)
    logits[torch.arange(len(predicted)), torch.tensor(predicted)] = strength
    return logits, torch.tensor(true)


def _pairs_of(confusion):
    true, predicted = [], []
    for t, row in enumerate(confusion):
        for p, count in enumerate(row):
            true += [t] * count
            predicted += [p] * count
    return true, predicted


# class 3 has an image but is never predicted; class 4 has no image and is never predicted
HAND_CONFUSION = [[2, 1, 0, 0, 0],
                  [0, 1, 1, 0, 0],
                  [1, 0, 3, 0, 0],
                  [0, 0, 1, 0, 0],
                  [0, 0, 0, 0, 0]]


def test_precision_recall_f1_of_a_hand_made_confusion_matrix():
    from cifarapp.evaluate import precision_recall_f1

    precision, recall, f1 = precision_recall_f1(np.array(HAND_CONFUSION))
    nan = np.nan
    assert np.allclose(precision, [2 / 3, 1 / 2, 3 / 5, nan, nan], equal_nan=True)
    assert np.allclose(recall, [2 / 3, 1 / 2, 3 / 4, 0, nan], equal_nan=True)
    assert np.allclose(f1, [2 / 3, 1 / 2, 2 / 3, 0, nan], equal_nan=True)
    defined = ~np.isnan(precision)
    assert np.allclose(f1[defined], (2 * precision * recall / (precision + recall))[defined])


def test_eval_result_has_per_class_and_macro_precision_recall_f1():
    logits, labels = _logits_for(*_pairs_of(HAND_CONFUSION), 5)
    result = metrics_from_logits(logits, labels, ("a", "b", "c", "d", "e"))
    assert np.array_equal(result.confusion, HAND_CONFUSION)
    assert np.allclose(result.recall, result.per_class_accuracy, equal_nan=True)
    assert result.macro_precision == pytest.approx((2 / 3 + 1 / 2 + 3 / 5) / 3)
    assert result.macro_recall == pytest.approx((2 / 3 + 1 / 2 + 3 / 4 + 0) / 4)
    assert result.macro_f1 == pytest.approx((2 / 3 + 1 / 2 + 2 / 3 + 0) / 4)
    lines = result.summary().splitlines()
    assert lines[1].split() == ["class", "accuracy", "precision", "recall", "F1", "images"]
    assert lines[2].split() == ["a", "66.67%", "66.67%", "66.67%", "66.67%", "3"]
    assert lines[5].split() == ["d", "0.00%", "n/a", "0.00%", "0.00%", "1"]
    assert lines[7].split() == ["macro", "average", "58.89%", "47.92%", "45.83%"]
    assert "no temperature fitted" in lines[8]


def test_temperature_changes_confidences_and_ece_but_not_predictions():
    logits = torch.tensor([[4., 0, 0], [0, 3, 1], [1, 0, 2], [2, 2.5, 0]])
    labels = torch.tensor([0, 1, 0, 0])
    raw = metrics_from_logits(logits, labels, CLASSES)
    scaled = metrics_from_logits(logits, labels, CLASSES, temperature=2.0)
    assert np.array_equal(raw.predicted, scaled.predicted) and np.array_equal(raw.confusion, scaled.confusion)
    assert np.allclose(scaled.probabilities, (logits / 2).softmax(1).numpy())
    for result, temperature in ((raw, 1.0), (scaled, 2.0)):
        expected = {i: float((logits[i] / temperature).softmax(0).max()) for i in (2, 3)}
        assert {m.index: m.confidence for m in result.mistakes} == pytest.approx(expected)
    assert scaled.raw_ece == pytest.approx(raw.raw_ece) and scaled.calibrated_ece != pytest.approx(raw.raw_ece)
    assert scaled.loss == pytest.approx(raw.loss)  # the raw training loss whatever the temperature
    assert np.allclose(scaled.losses, -np.log(scaled.probabilities[np.arange(4), labels.numpy()]), atol=1e-6)
    assert "before temperature scaling" in scaled.summary() and "(temperature 2)" in scaled.summary()


def test_most_confused_pairs_sorted_by_count():
    from cifarapp.evaluate import most_confused

    confusion = np.array([[5, 3, 0], [4, 6, 1], [0, 3, 2]])
    pairs = most_confused(confusion, ("a", "b", "c"), k=10)
    assert [(p.true_name, p.predicted_name, p.count) for p in pairs] == [
        ("b", "a", 4), ("a", "b", 3), ("c", "b", 3), ("b", "c", 1)]  # equal counts in row order; no zeros
    assert [(p.true, p.predicted) for p in most_confused(confusion, ("a", "b", "c"), k=2)] == [(1, 0), (0, 1)]


def test_cell_indices_most_confident_first():
    from cifarapp.evaluate import cell_indices

    labels = torch.tensor([0, 0, 1, 0, 0, 1, 2])
    logits = torch.tensor([[0., 2, 0], [3, 0, 0], [0, 4, 0], [0, 5, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]])
    result = metrics_from_logits(logits, labels, CLASSES, temperature=3.0)
    assert cell_indices(result, 0, 1).tolist() == [3, 0, 4]
    assert cell_indices(result, 0, 0).tolist() == [1]
    assert cell_indices(result, 1, 1).tolist() == [2]
    assert cell_indices(result, 2, 0).tolist() == []
    assert cell_indices(result, 2, 1).tolist() == [6], "a tie goes to the first class"


def test_top_losses_highest_first():
    from cifarapp.evaluate import top_losses

    labels = torch.tensor([0, 1, 2, 0])
    logits = torch.tensor([[3., 0, 0], [0, 0, 4], [0, 0, 1], [0, 6, 0]])  # 3: worst, then 1, then 2, then 0
    result = metrics_from_logits(logits, labels, CLASSES)
    assert top_losses(result).tolist() == [3, 1, 2, 0]
    assert top_losses(result, 2).tolist() == [3, 1]


def test_compare_counts_a_hand_made_case():
    from cifarapp.evaluate import compare

    labels = [0, 1, 2, 0, 1, 2, 0, 0]
    a = [0, 1, 0, 0, 2, 2, 1, 1]
    b = [0, 2, 2, 1, 1, 0, 2, 1]
    result_a = metrics_from_logits(*_logits_for(labels, a, 3), CLASSES)
    result_b = metrics_from_logits(*_logits_for(labels, b, 3), CLASSES)
    comparison = compare(result_a, result_b, ("first", "second"))
    assert (comparison.both_right, comparison.only_a_right, comparison.only_b_right, comparison.both_wrong) == (
        1, 3, 2, 2)
    assert comparison.disagreements.tolist() == [1, 2, 3, 4, 5, 6]
    assert np.allclose(comparison.per_class_accuracy[0], [2 / 4, 1 / 2, 1 / 2])
    assert np.allclose(comparison.per_class_accuracy[1], [1 / 4, 1 / 2, 1 / 2])
    assert "only first right 3" in comparison.summary()
    other = metrics_from_logits(*_logits_for([1] * 8, a, 3), CLASSES)
    with pytest.raises(ValueError, match="same images"):
        compare(result_a, other)
