import pytest
import torch

from cifarapp.models import MODELS, build_model, parameter_count, registered_parameter_count


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_and_backward(name):
    torch.manual_seed(0)
    model = build_model(name).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert MODELS[name].description


def test_parameter_counts_match_the_architectures():
    # LeNet-5: conv 3*6*25+6, conv 6*16*25+16, FC 400*120+120, 120*84+84, 84*10+10
    assert parameter_count(build_model("lenet")) == 456 + 2416 + 48120 + 10164 + 850
    # 4x4 filters: conv 3*6*16+6, conv 6*16*16+16, same FC
    assert parameter_count(build_model("lenet_k4")) == 294 + 1552 + 48120 + 10164 + 850
    # BatchNorm adds a scale and shift per conv channel: 2 * (6 + 16)
    assert parameter_count(build_model("lenet_bn")) == parameter_count(build_model("lenet")) + 44
    convs = [(3, 32), (32, 64), (64, 128), (128, 128), (128, 256), (256, 256)]
    cnn6 = sum(i * o * 9 + o for i, o in convs) + 2 * (32 + 128 + 256)
    cnn6 += 4096 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 10 + 10
    assert parameter_count(build_model("cnn6")) == cnn6
    assert 11_000_000 < parameter_count(build_model("resnet18")) < 11_300_000
    assert parameter_count(build_model("fastnet", width=0.5)) < parameter_count(build_model("fastnet"))
    for name in MODELS:
        assert registered_parameter_count(name) == parameter_count(build_model(name))


def test_resnet18_keeps_resolution_in_the_stem():
    model = build_model("resnet18")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_fastnet_whitening_decorrelates_patches():
    torch.manual_seed(0)
    # correlated input: smooth images, so neighbouring pixels and channels are strongly correlated
    base = torch.nn.functional.interpolate(torch.randn(256, 1, 8, 8), size=32, mode="bilinear")
    images = base.repeat(1, 3, 1, 1) + 0.3 * torch.randn(256, 3, 32, 32)
    model = build_model("fastnet", width=0.25)
    model.init_whitening(images)
    with torch.no_grad():
        out = model.whiten(images)[:, :12]  # the positive half of the filters
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(flat.T)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg99")
