"""Networks of the papers' experiments. Each exposes ``features(x)`` and ``classifier(h)``
besides ``forward``, and ``feature_dim`` (width of ``features``) and ``num_classes``, so that
representation-based objectives (MOON, FedGen) can use them; the capabilities are declared in
:mod:`lightning_modules.models.protocols`."""

from lightning_modules.models.cnn import CNN
from lightning_modules.models.lenet import LeNetCNN
from lightning_modules.models.generator import FeatureGenerator
from lightning_modules.models.lstm import CharLSTM, Sent140LSTM
from lightning_modules.models.resnet20 import AuthorsResNet20, ResNet20
from lightning_modules.models.resnet_family import FAMILY_STAGES, HeteroResNet, WidthScaledResNet
from lightning_modules.models.scalefl_resnet import ScaleFLResNet
from lightning_modules.models.vgg16 import VGG16

__all__ = ["LeNetCNN", "AuthorsResNet20", "HeteroResNet", "WidthScaledResNet", "ScaleFLResNet", "FAMILY_STAGES", "CNN", "ResNet20", "VGG16", "FeatureGenerator", "CharLSTM", "Sent140LSTM"]
