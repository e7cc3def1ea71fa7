"""SCAN model: attention shapes, head costs, real early exit equals the all-exits forward."""

import pytest
import torch

from scan_cli.model import Attention, HeadConfig, build_scan_model
from scan_cli.backbones.registry import default_registry


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_scan_model(default_registry().get("test_resnet"), num_classes=5, head=HeadConfig(), input_size=64).eval()


@pytest.mark.parametrize("size", [7, 8, 13, 14])
def test_attention_keeps_shape_for_odd_sizes(size):
    x = torch.randn(2, 16, size, size)
    assert Attention(16, reduction=2)(x).shape == x.shape


def test_attention_can_be_switched_off():
    m = build_scan_model(default_registry().get("test_resnet"), num_classes=3,
                         head=HeadConfig(attention=False), input_size=64)
    assert all(isinstance(a, torch.nn.Identity) for a in m.attentions)


def test_paper_heads_are_full_width_and_slim_are_not():
    spec = default_registry().get("test_resnet")
    paper = build_scan_model(spec, num_classes=3, head=HeadConfig.preset("paper"), input_size=64)
    slim = build_scan_model(spec, num_classes=3, head=HeadConfig.preset("slim"), input_size=64)
    c = spec.split_points[2].channels
    assert paper.attentions[2].down[0].out_channels == c  # the paper: full width, on the split's features
    assert isinstance(slim.attentions[2], torch.nn.Identity)  # slim: inside the head, on its reduced features
    assert slim.heads[2].attention.down[0].in_channels == slim.heads[2].body[3].out_channels < c
    assert slim.heads[0].body[0].out_channels <= spec.split_points[0].channels  # narrow: no wider than the split


def test_slim_attention_gates_the_reduced_features(monkeypatch):
    spec = default_registry().get("test_resnet")
    slim = build_scan_model(spec, num_classes=3, head=HeadConfig.preset("slim"), input_size=64).eval()
    seen = []
    head = slim.heads[1]
    monkeypatch.setattr(head.attention, "forward", lambda x: seen.append(tuple(x.shape)) or x)
    slim(torch.randn(2, 3, 64, 64))
    assert seen[0][1] == head.body[3].out_channels and seen[0][2] == 2  # the last stage's resolution (64 / 32)


def test_earlier_model_files_keep_their_head_shape():
    """A head config written before attention_at/narrow existed builds the old architecture."""
    old = HeadConfig(width=None, attention=True, attention_reduction=8)
    m = build_scan_model(default_registry().get("test_resnet"), num_classes=3, head=old, input_size=64)
    assert not isinstance(m.attentions[0], torch.nn.Identity) and not hasattr(m.heads[0], "attention")


def test_forward_gives_every_exit(model):
    outs = model(torch.randn(3, 3, 64, 64))
    assert len(outs) == model.num_exits == 4
    assert all(o.shape == (3, 5) for o in outs)


def test_early_exit_matches_the_cascade_rule(model):
    torch.manual_seed(1)
    x = torch.randn(16, 3, 64, 64)
    with torch.no_grad():
        outs = model(x)
    probs = [torch.softmax(o, -1).max(-1).values for o in outs]
    # thresholds half-way between two neighbouring scores near each median (never equal to a score,
    # so float ties cannot decide the test): roughly half the remaining images leave at each exit
    thresholds = []
    for p in probs[:-1]:
        s = p.sort().values
        thresholds.append(float((s[7] + s[8]) / 2))
        assert s[7] < thresholds[-1] < s[8]
    res = model.early_exit(x, thresholds)
    for i in range(16):
        expected = next((k for k in range(3) if probs[k][i] >= thresholds[k]), 3)
        assert int(res.exit_index[i]) == expected
        assert torch.allclose(res.logits[i], outs[expected][i], atol=1e-5)
    assert len(set(res.exit_index.tolist())) > 1


def test_early_exit_skips_later_sections(model, monkeypatch):
    calls = []
    original = model.section

    def spy(k, h):
        calls.append((k, h.shape[0]))
        return original(k, h)

    monkeypatch.setattr(model, "section", spy)
    model.early_exit(torch.randn(4, 3, 64, 64), [0.0, 0.0, 0.0])
    assert calls == [(0, 4)]  # everyone left at exit 1: no later section ran


def test_ensemble_fallback_is_mean_of_exits(model):
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        outs = model(x)
    res = model.early_exit(x, [None, None, None], fallback="ensemble")
    assert torch.allclose(res.logits, torch.stack(outs).mean(0), atol=1e-5)


def _spy_modules(model, monkeypatch):
    """Count calls of every attention module and exit head."""
    calls = []
    for kind, mods in (("attention", model.attentions), ("head", model.heads)):
        for k, m in enumerate(mods):
            original = m.forward

            def spy(*a, _orig=original, _tag=(kind, k), **kw):
                calls.append(_tag)
                return _orig(*a, **kw)

            monkeypatch.setattr(m, "forward", spy)
    return calls


def test_a_disabled_exit_runs_no_attention_and_no_head(model, monkeypatch):
    calls = _spy_modules(model, monkeypatch)
    x = torch.randn(4, 3, 64, 64)
    res = model.early_exit(x, [None, float("inf"), None])
    assert calls == []  # never-firing exits cost nothing: the plain backbone ran, nothing else
    with torch.no_grad():
        plain = model.backbone(x)
    assert torch.allclose(res.logits, plain, atol=1e-5) and bool((res.exit_index == 3).all())
    calls.clear()
    model.early_exit(x, [None, 1.1, None])  # exit 2 can never fire (max softmax <= 1) but is enabled
    assert calls == [("attention", 1), ("head", 1)]


def test_the_ensemble_fallback_still_needs_every_head(model, monkeypatch):
    calls = _spy_modules(model, monkeypatch)
    model.early_exit(torch.randn(2, 3, 64, 64), [None, None, None], fallback="ensemble")
    assert sorted(set(calls)) == [("attention", k) for k in range(3)] + [("head", k) for k in range(3)]
