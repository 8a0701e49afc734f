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
