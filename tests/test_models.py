import pytest
import torch

from lightning_modules.models import CNN, VGG16, ResNet20


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("net,shape", [
    (CNN(3, 10, 32), (2, 3, 32, 32)),
    (CNN(1, 10, 28), (2, 1, 28, 28)),
    (CNN(1, 10, 8), (2, 1, 8, 8)),
    (ResNet20(3, 100), (2, 3, 32, 32)),
    (ResNet20(1, 10), (2, 1, 28, 28)),
    (VGG16(3, 10), (2, 3, 32, 32)),
])
def test_output_shapes_and_feature_split(net, shape):
    net.eval()
    x = torch.randn(*shape)
    out = net(x)
    assert out.shape == (2, net.num_classes)
    assert torch.allclose(net.classifier(net.features(x)), out)


def test_parameter_counts_match_the_architectures():
    # FedAvg CNN on 32x32x3: conv 3*32*25+32, conv 32*64*25+64, fc 4096*512+512, fc 512*10+10
    assert _params(CNN(3, 10, 32)) == (2432 + 51264 + 2097664 + 5130)
    assert 0.26e6 < _params(ResNet20()) < 0.28e6  # He et al.: 0.27 M
    assert 14.5e6 < _params(VGG16()) < 15.5e6


def test_resnet20_has_twenty_weighted_layers():
    convs = [m for m in ResNet20().modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in ResNet20().modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linears) == 20  # option A shortcuts hold no parameters


def test_cnn_rejects_bad_image_size():
    with pytest.raises(ValueError, match="image_size"):
        CNN(1, 10, 30)
