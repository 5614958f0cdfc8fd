"""The capabilities a net offers are declared (``lightning_modules.models.protocols``), satisfied by
the shipped nets and by a user's net with the same members, and checked in one place: no
getattr/hasattr probe of nets, modules or strategies is left in flcore/ or lightning_modules/."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_modules import FedGenModule, FedINModule, MoonModule, ScaleFLModule
from lightning_modules.models import CNN, VGG16, HeteroResNet, LeNetCNN, ResNet20, ScaleFLResNet, WidthScaledResNet
from lightning_modules.models.lstm import CharLSTM
from lightning_modules.models.protocols import (EarlyExitNet, FeatureNet, IntermediateNet, ModelFamily, SplitNet,
                                                num_classes_of)

ROOT = Path(__file__).resolve().parent.parent

IMG8, IMG32 = torch.zeros(2, 1, 8, 8), torch.zeros(2, 3, 32, 32)
NETS = {  # net, a sample input, the protocols it declares (its docstring's promise)
    "cnn": (lambda: CNN(1, 10, 8), IMG8, {SplitNet, FeatureNet}),
    "lenet": (lambda: LeNetCNN(), IMG32, {SplitNet, FeatureNet}),
    "resnet20": (lambda: ResNet20(), IMG32, {SplitNet, FeatureNet}),
    "vgg16": (lambda: VGG16(), IMG32, {SplitNet, FeatureNet}),
    "char_lstm": (lambda: CharLSTM(hidden=8), torch.zeros(2, 8, dtype=torch.long), {SplitNet, FeatureNet}),
    "hetero_resnet": (lambda: HeteroResNet("resnet10", 1, 10, width=4), IMG8, {FeatureNet, ModelFamily,
                                                                              IntermediateNet}),
    "width_scaled": (lambda: WidthScaledResNet("resnet10", 1, 10, width=8), IMG8, {FeatureNet, ModelFamily,
                                                                                   IntermediateNet}),
    "scalefl": (lambda: ScaleFLResNet("resnet10", 1, 10, width=8), IMG8, {ModelFamily, EarlyExitNet}),
}
ALL = {FeatureNet, SplitNet, ModelFamily, IntermediateNet, EarlyExitNet}


@pytest.mark.parametrize("name", list(NETS))
def test_shipped_nets_satisfy_what_they_declare(name):
    build, x, declared = NETS[name]
    net = build().eval()
    assert {p for p in ALL if isinstance(net, p)} >= declared
    if FeatureNet in declared:
        assert net.features(x).shape == (2, net.feature_dim)
    if SplitNet in declared:
        assert torch.allclose(net.classifier(net.features(x)), net(x))
    if IntermediateNet in declared:
        assert torch.allclose(net.classifier(net.intermediate(net.extractor(x))), net(x))
    if EarlyExitNet in declared:
        assert [tuple(z.shape) for z in net.exit_logits(x)][-1] == (2, 10)
    if ModelFamily in declared:
        other = net.with_architecture(net.ARCHITECTURES[-1])
        assert isinstance(other, type(net)) and other.ARCHITECTURES == net.ARCHITECTURES


class UserFeatureNet(nn.Module):
    """A user's net with the members, inheriting nothing of flcore's."""

    num_classes, feature_dim = 10, 16

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(64, 16), nn.Linear(16, 10)

    def features(self, x):
        return torch.relu(self.body(x.flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


def test_a_users_net_qualifies_structurally_and_a_bare_one_is_refused_in_one_line():
    assert isinstance(UserFeatureNet(), FeatureNet) and not isinstance(UserFeatureNet(), SplitNet)
    MoonModule(UserFeatureNet())  # accepted as it is
    bare = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert num_classes_of(bare) is None and num_classes_of(UserFeatureNet()) == 10
    for build, message in [
        (lambda: MoonModule(bare), r"^model.net: MOON needs a network with features\(\), feature_dim and num_classes"),
        (lambda: FedGenModule(UserFeatureNet()), r"^model.net: FedGen needs a network with a feature/classifier split"),
        (lambda: ScaleFLModule(CNN(1, 10, 8)), r"^model.net: ScaleFL needs a network with early exits"),
    ]:
        with pytest.raises(ValueError, match=message):
            build()
    with pytest.raises(ValueError, match=r"^model.net: FedIN needs extractor / intermediate / classifier"):
        FedINModule(CNN(1, 10, 8)).check_local_config({})


# Each getattr/hasattr left in flcore/ and lightning_modules/, and why it is no probe of a net,
# module or strategy. A new one fails this test: declare the capability instead.
ALLOWED = {
    "flcore/cli.py": 2,  # resolving a class path; abstract-class filter of the subcommand list
    "flcore/checks.py": 2,  # resolving a class path; torch.backends.mps exists only on some builds
    "flcore/compat.py": 1,  # the Lightning internals, in their one place
    "flcore/config_record.py": 6,  # recording any user object's settings
    "flcore/executors/ray.py": 3,  # a datamodule recipe sent to a Ray node
    "flcore/executors/process_pool.py": 1,  # the pool's worker processes, to stop them
    "flcore/plain_local.py": 1,  # a user's batch (any structure) for its sample count
    "lightning_modules/models/scalefl_resnet.py": 1,  # the net's own stage names
}


def test_no_new_getattr_or_hasattr_probes():
    found = {}
    for folder in ("flcore", "lightning_modules"):
        for path in (ROOT / folder).rglob("*.py"):
            code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
            n = len(re.findall(r"\b(?:getattr|hasattr)\(", code))
            if n:
                found[str(path.relative_to(ROOT))] = n
    assert found == ALLOWED
