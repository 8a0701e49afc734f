import numpy as np
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
