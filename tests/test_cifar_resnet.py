"""The CIFAR ResNets are scan's torch-only copy of timm's ResNet with the stem swapped (issue 21: a
CIFAR run is predicted without importing timm or torchvision). Checked against timm itself: a seed
gives the same weights and leaves the generator where timm's build left it (so `scan fit` trains as
before), the same module tree (so the caches keyed by it stay valid), the same outputs, and files
of models built from timm's classes load unchanged."""

import pytest
import torch
import torch.nn as nn

from scan_cli.backbones import cifar

timm_resnet = pytest.importorskip("timm.models.resnet")


def timm_build(arch: str, num_classes: int):
    """What build_cifar_resnet was before: timm's ResNet, the stem swapped."""
    kind, layers, _ = cifar.ARCHS[arch]
    block = timm_resnet.BasicBlock if kind == "basic" else timm_resnet.Bottleneck
    model = timm_resnet.ResNet(block=block, layers=layers, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@pytest.mark.parametrize("arch", sorted(cifar.ARCHS))
def test_a_seed_builds_timms_weights_and_the_same_network(arch):
    from scan_cli.profiling.costs import structure_key

    torch.manual_seed(7)
    theirs = timm_build(arch, 5)
    after_theirs = torch.get_rng_state()
    torch.manual_seed(7)
    ours = cifar.build_cifar_resnet(arch, num_classes=5).model
    assert torch.equal(torch.get_rng_state(), after_theirs)  # what is drawn next (the exit heads) is the same too
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert repr(ours) == repr(theirs) and structure_key(ours) == structure_key(theirs)
    x = torch.randn(3, 3, 32, 32)
    for mode in ("train", "eval"):
        getattr(theirs, mode)(), getattr(ours, mode)()
        with torch.no_grad():
            assert torch.equal(ours(x.clone()), theirs(x.clone())), mode
            assert torch.equal(ours.forward_head(ours.forward_features(x), pre_logits=True),
                               theirs.forward_head(theirs.forward_features(x), pre_logits=True))
    assert ours.num_features == theirs.num_features and ours.get_classifier().out_features == 5


def test_timms_trained_tensors_load_and_answer_the_same():
    torch.manual_seed(0)
    theirs = timm_build("resnet18_cifar", 10)
    with torch.no_grad():  # trained-looking batch-norm statistics
        for m in theirs.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    ours = cifar.build_cifar_resnet("resnet18_cifar", num_classes=10).model
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))


def test_reset_classifier_draws_as_timm_does():
    torch.manual_seed(1)
    theirs = timm_build("resnet10_cifar", 10)
    ours = cifar.build_cifar_resnet("resnet10_cifar", num_classes=10).model
    torch.manual_seed(2)
    theirs.reset_classifier(3)
    torch.manual_seed(2)
    ours.reset_classifier(3)
    assert ours.num_classes == 3 and torch.equal(ours.fc.weight, theirs.fc.weight)
    assert repr(ours) == repr(theirs)
