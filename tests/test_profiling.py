"""MAC counting: exact on hand-computable toys, the cascade's cumulative costs, attention counted,
nothing silently dropped, the published resnet50 cost, caching, expected cost, latency schema."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from scan_cli import profiling
from scan_cli.model import build_bare_model
from scan_cli.errors import ScanError
from scan_cli.profiling import costs, macs
from scan_cli.contract import StagedBackbone
from scan_cli.model import HeadConfig, ScanModel
from scan_cli.backbones.shapes import trace_shapes


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# -- single pieces ------------------------------------------------------------------------------
def test_conv_macs_exact():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    piece = profiling.count_piece(conv, torch.randn(1, 3, 10, 10))
    assert piece.macs == 8 * 3 * 3 * 3 * 10 * 10  # Cout * Cin * k * k * Hout * Wout


def test_linear_macs_exact():
    piece = profiling.count_piece(nn.Linear(20, 7), torch.randn(1, 20))
    assert piece.macs == 20 * 7


def test_transposed_conv_macs_exact():
    deconv = nn.ConvTranspose2d(4, 6, 4, 2, 1, bias=False)
    piece = profiling.count_piece(deconv, torch.randn(1, 4, 5, 5))
    assert piece.macs == 4 * 6 * 4 * 4 * 5 * 5  # every input pixel scatters a Cout x k x k patch


def test_sdpa_macs_exact():
    q, k, v = torch.randn(2, 3, 7, 8), torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 16)
    piece = profiling.count_piece(lambda a, b, c: F.scaled_dot_product_attention(a, b, c), q, k, v)
    assert piece.macs == 2 * 3 * 7 * 5 * (8 + 16)
    assert piece.uncounted == {}


def test_sdpa_without_the_handle_is_listed_as_uncounted():
    q = torch.randn(1, 2, 4, 8)
    piece = profiling.count_piece(lambda a: F.scaled_dot_product_attention(a, a, a), q, handles={})
    assert piece.macs == 0
    assert piece.uncounted == {"aten::scaled_dot_product_attention": 1}


def test_unknown_ops_are_listed_not_dropped():
    piece = profiling.count_piece(lambda x: torch.cumprod(x, dim=-1) @ x.t(), torch.randn(3, 4))
    assert piece.macs == 3 * 4 * 3  # the matmul
    assert piece.uncounted == {"aten::cumprod": 1}


def test_elementwise_and_data_movement_are_listed_by_kind():
    seq = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.ReLU(), nn.Sigmoid(), nn.Flatten())
    piece = profiling.count_piece(seq, torch.randn(1, 2, 3, 3))
    assert piece.macs == 2 * 2 * 9
    assert piece.elementwise == {"aten::relu": 1, "aten::sigmoid": 1}
    assert piece.data_movement == {"aten::flatten": 1}
    assert piece.uncounted == {}


# -- a hand-computable ScanModel ----------------------------------------------------------------
class ToyBackbone(StagedBackbone):
    """stem conv -> u0 (1x1) -> u1 (3x3 stride 2) -> u2 (1x1) -> pool + linear, 8x8 inputs."""

    unit_names = ["u0", "u1", "u2"]
    unit_depths = [1, 1, 1]
    data_config = {}

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.u0 = nn.Conv2d(4, 4, 1, bias=False)
        self.u1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.u2 = nn.Conv2d(8, 8, 1, bias=False)
        self.fc = nn.Linear(8, 5)

    @property
    def num_classes(self):
        return 5

    def forward_stem(self, x):
        return self.stem(x)

    def forward_head(self, x, pre_logits=False):
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.fc(x)

    def classify(self, pre_logits):
        return self.fc(pre_logits)


@pytest.fixture(scope="module")
def toy():
    backbone = ToyBackbone().eval()
    head = HeadConfig(width=4, attention=True, attention_reduction=1)
    return ScanModel(backbone, ["u0", "u1"], 5, head, trace_shapes(backbone, 8)).eval()


def bn(numel):  # fvcore (and so timm's published numbers) counts an affine eval batch norm as 2 per element
    return 2 * numel


def test_toy_model_pieces_exact(toy):
    r = profiling.count_macs(toy, 8)
    stem = 4 * 3 * 9 * 64
    u0, u1, u2 = 4 * 4 * 64, 8 * 4 * 9 * 16, 8 * 8 * 16
    final_head = 8 * 16 + 8 * 5  # fvcore: adaptive avg pool = 1 per input element; then the linear
    assert r.stem_macs == stem
    assert r.section_macs == [u0, u1, u2]
    assert r.backbone_macs == stem + u0 + u1 + u2 + final_head

    # exit 1 after u0 (4 ch, 8x8; the last map is 4x4, so the head's patchify conv has stride 2)
    att0 = 4 * 4 * 9 * 16 + bn(4 * 16) + 4 * 4 * 16 * 16 + bn(4 * 64)  # conv3x3/2, BN, deconv4x4/2 on 4x4, BN
    head0 = (4 * 4 * 64 + bn(4 * 64)  # 1x1 reduce
             + 4 * 4 * 4 * 16 + bn(4 * 16)  # 2x2 stride-2 conv
             + 4 * 8 * 16 + bn(8 * 16)  # 1x1 expand to the pre-logits width
             + 8 * 16 + 8 * 5)  # pool + linear
    # exit 2 after u1 (8 ch, 4x4; stride 1)
    att1 = 8 * 8 * 9 * 4 + bn(8 * 4) + 8 * 8 * 16 * 4 + bn(8 * 16)
    head1 = 8 * 4 * 16 + bn(4 * 16) + 4 * 4 * 16 + bn(4 * 16) + 4 * 8 * 16 + bn(8 * 16) + 8 * 16 + 8 * 5
    e0, e1, e2 = r.exits
    assert (e0.attention_macs, e0.head_macs, e0.exit_macs) == (att0, head0, att0 + head0)
    assert (e1.attention_macs, e1.head_macs) == (att1, head1)
    assert (e2.attention_macs, e2.head_macs) == (0, final_head)
    assert e0.backbone_macs_to_split == stem + u0
    assert e0.macs_cumulative == stem + u0 + att0 + head0
    assert e1.macs_cumulative == stem + u0 + u1 + att0 + head0 + att1 + head1
    assert e2.macs_cumulative == r.backbone_macs + att0 + head0 + att1 + head1
    # parameters: attention = conv + BN weight/bias + deconv + BN; the final exit = the backbone's fc
    assert e0.attention_params == 4 * 4 * 9 + 8 + 4 * 4 * 16 + 8
    assert e0.params == sum(p.numel() for p in toy.attentions[0].parameters()) + sum(p.numel() for p in toy.heads[0].parameters())
    assert e2.params == 8 * 5 + 5
    assert r.backbone_params == sum(p.numel() for p in toy.backbone.parameters())
    assert r.uncounted_ops == {}
    assert r.not_counted_elementwise["aten::sigmoid"] == 2 and r.not_counted_elementwise["aten::mul"] == 2


def test_cumulative_costs_are_non_decreasing_and_end_at_backbone_plus_heads():
    model, size = build_bare_model("test_resnet", 64)
    r = profiling.count_macs(model, size)
    cum = r.cumulative
    assert len(cum) == model.num_exits == 4
    assert all(a <= b for a, b in zip(cum, cum[1:]))
    assert cum[-1] == r.backbone_macs + sum(e.exit_macs for e in r.exits[:-1])
    assert r.shallow_exit_macs == cum[-1] - r.backbone_macs
    # the counted plain network equals fvcore on timm's own forward
    plain = profiling.count_piece(model.backbone.model, torch.randn(1, 3, size, size))
    assert plain.macs == r.backbone_macs


# -- attention is counted -----------------------------------------------------------------------
def test_vit_count_includes_attention():
    model, size = build_bare_model("test_vit")  # native size: no position-embedding resampling
    blocks = model.backbone.model.blocks
    for blk in blocks:
        blk.attn.fused_attn = True  # F.scaled_dot_product_attention, whatever timm.layers.use_fused_attn() says
    vit = model.backbone.model
    tokens = vit.num_prefix_tokens + (size // vit.patch_embed.patch_size[0]) ** 2
    expected = sum(b.attn.num_heads * tokens * tokens * 2 * b.attn.head_dim for b in blocks)
    with_handle = profiling.count_macs(model, size)
    without = profiling.count_macs(model, size, handles={})
    assert with_handle.by_operator["scaled_dot_product_attention"] == expected
    assert with_handle.backbone_macs - without.backbone_macs == expected
    assert without.uncounted_ops == {"aten::scaled_dot_product_attention": len(blocks)}
    assert with_handle.uncounted_ops == {}
    # an independent count: timm's unfused path computes the same attention as two matmuls
    # (q @ k^T, attn @ v), which fvcore counts by itself; the fused kernel must cost the same
    for blk in blocks:
        blk.attn.fused_attn = False
    unfused = profiling.count_macs(model, size, handles={})
    assert "scaled_dot_product_attention" not in unfused.by_operator and unfused.uncounted_ops == {}
    assert unfused.backbone_macs == with_handle.backbone_macs


# -- published cost -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet50_reports():
    slim, size = build_bare_model("resnet50", 224, "slim")
    # the paper's heads on the same backbone (no second build)
    paper = ScanModel(slim.backbone, slim.split_modules, slim.num_classes, HeadConfig.preset("paper"),
                      trace_shapes(slim.backbone, size)).eval()
    return {"slim": profiling.count_macs(slim, size), "paper": profiling.count_macs(paper, size)}


def test_resnet50_matches_timms_published_gmacs(resnet50_reports):
    r = resnet50_reports["slim"]
    assert r.backbone_macs == pytest.approx(4.11e9, rel=0.01)
    assert r.uncounted_ops == {}


def test_slim_heads_cost_under_a_quarter_of_resnet50(resnet50_reports):
    slim, paper = resnet50_reports["slim"], resnet50_reports["paper"]
    assert slim.heads_overhead < 0.25
    assert paper.heads_overhead > slim.heads_overhead  # the paper's full-width attention is the expensive part
    print(f"resnet50@224 heads overhead: slim {100 * slim.heads_overhead:.1f}%, paper {100 * paper.heads_overhead:.1f}%")


# -- caching and calibrate's entry point --------------------------------------------------------
@pytest.fixture
def run_dir(tmp_path):
    from scan_cli import artifact
    from scan_cli.model import build_scan_model
    from scan_cli.backbones.registry import default_registry

    reg = default_registry()
    spec = reg.get("resnet10_cifar")
    model = build_scan_model(spec, num_classes=10, head=HeadConfig(), input_size=16)
    info = artifact.info_for(model, spec, reg, classes=[str(i) for i in range(10)],
                             data_config={"input_size": [3, 16, 16]}, input_size=16)
    run = tmp_path / "run"
    artifact.save(model, info, run / "model.safetensors")
    return run


def test_run_costs_are_cached_per_artifact(run_dir, monkeypatch):
    cumulative, backbone, heads = profiling.cascade_costs(run_dir)
    cache = list((run_dir / "cache").glob("macs-*-16.json"))
    assert len(cache) == 1
    from scan_cli.artifact import artifact_fingerprint

    assert cache[0].name == f"macs-{artifact_fingerprint(run_dir / 'model.safetensors')}-16.json"
    assert json.loads(cache[0].read_text())["report"]["backbone_macs"] == backbone

    def boom(*a, **k):
        raise AssertionError("counted again instead of reading the cache")

    monkeypatch.setattr(costs, "count_macs", boom)
    costs._MEMORY_CACHE.clear()
    assert profiling.cascade_costs(str(run_dir)) == (cumulative, backbone, heads)
    assert profiling.cascade_costs(run_dir)[0] == cumulative


def test_model_costs_with_a_cache_dir(tmp_path, toy, monkeypatch):
    costs._MEMORY_CACHE.clear()
    first = profiling.cascade_costs(toy, 8, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("macs-arch-*-8.json"))) == 1
    costs._MEMORY_CACHE.clear()
    monkeypatch.setattr(costs, "count_macs", lambda *a, **k: pytest.fail("cache not used"))
    assert profiling.cascade_costs(toy, 8, cache_dir=tmp_path) == first
    assert isinstance(first[0][0], float) and first[1] == profiling.MacReport.from_dict(
        json.loads(next(tmp_path.glob("*.json")).read_text())["report"]).backbone_macs


def test_damaged_cache_is_recomputed(run_dir):
    good = profiling.cascade_costs(run_dir)
    path = next((run_dir / "cache").glob("macs-*.json"))
    path.write_text("{not json")
    costs._MEMORY_CACHE.clear()
    assert profiling.cascade_costs(run_dir) == good
    assert json.loads(path.read_text())["cache_schema"] == profiling.CACHE_SCHEMA


# -- expected cost ------------------------------------------------------------------------------
def test_expected_cost_weights_cumulative_costs_by_exit_shares(toy):
    """Shares that the thresholds really give on the toy (not made-up numbers next to thresholds the
    model never reaches): the expected cost is what the images leaving there really cost, on average."""
    from scan_cli.scoring import confidence

    r = profiling.count_macs(toy, 8)
    x = torch.randn(60, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = [confidence(z.float(), "max_softmax") for z in toy(x)]
        t1 = float(scores[0].quantile(0.5))  # about half leave at exit 1
        rest = scores[1][scores[0] < t1]
        thresholds = [t1, float(rest.quantile(0.4)), None]  # about 60 % of the rest at exit 2, 20 % of all at 3
        out = toy.early_exit(x, thresholds, "max_softmax", "last")
    exits = out.exit_index.tolist()
    shares = [exits.count(k) / len(exits) for k in range(3)]
    assert min(shares) >= 0.1 and len(set(shares)) == 3, shares  # spread and uneven, so that a wrong weighting shows
    exp = profiling.expected_cost(r, {"thresholds": thresholds, "exit_shares": shares})
    want = sum(r.cumulative[k] for k in exits) / len(exits)  # per image, then averaged
    assert exp.macs == pytest.approx(want)
    assert exp.speedup == pytest.approx(r.backbone_macs / want)


@pytest.mark.parametrize("cal", [None, {}, {"thresholds": [0.9, None], "exit_shares": [0.5, 0.5]},
                                 {"thresholds": [0.9, 0.8, None], "exit_shares": [0.5, 0.3, 0.3]}])
def test_missing_or_bad_calibration_gives_no_expected_cost(toy, cal):
    r = profiling.count_macs(toy, 8)
    assert profiling.calibration_error(cal, r.num_exits)
    with pytest.raises(ScanError):
        profiling.expected_cost(r, cal)


# -- latency: schema only, never timing ---------------------------------------------------------
def test_measure_latency_schema(toy):
    before = torch.get_num_threads()
    lat = profiling.measure_latency(toy, 8, batch_sizes=(1, 2), device="cpu", threads=1, warmup=0, iters=2)
    doc = lat.to_dict()
    assert doc["device"] == "cpu" and doc["threads"] == 1 and doc["batch_sizes"] == [1, 2]
    assert set(doc["backbone"]) == {"1", "2"}
    assert len(doc["exits"]) == toy.num_exits
    for e in doc["exits"]:
        for b in ("1", "2"):
            t = e["latency_ms"][b]
            assert t["n"] == 2 and t["p50_ms"] > 0 and t["p95_ms"] >= t["p50_ms"] and b in e["latency_ratio"]
    assert torch.get_num_threads() == before  # --threads is restored afterwards


def test_run_to_exit_runs_only_what_an_image_leaving_there_needs(toy, monkeypatch):
    called = []
    monkeypatch.setattr(toy, "section", lambda k, h, orig=toy.section: called.append(k) or orig(k, h))
    with torch.no_grad():
        out = profiling.run_to_exit(toy, 0, torch.randn(2, 3, 8, 8))
    assert called == [0] and out.shape == (2, 5)


def test_measure_cascade_schema(toy):
    batches = [torch.randn(4, 3, 8, 8), torch.randn(3, 3, 8, 8)]
    t = profiling.measure_cascade(toy, batches, [0.0, None, None], device="cpu", threads=1, warmup=0, repeats=1)
    assert t.images == 7 and t.batch_size == 4 and t.repeats == 1
    assert t.observed_exit_shares == pytest.approx([1.0, 0.0, 0.0])  # threshold 0 fires every image at exit 1
    assert t.measured_speedup == pytest.approx(t.backbone_s / t.cascade_s)
