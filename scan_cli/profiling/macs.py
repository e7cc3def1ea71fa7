"""What an exit costs, counted: fvcore MAC counts per piece and the cascade's expected cost.

Units: fvcore counts one multiply-accumulate as one "flop"; everything here is named for what it is,
**MACs** (GFLOPs = 2 x MACs, only where a caller asks for it). Counting uses batch size 1.

The model is counted piece by piece, each piece fed the real activation of the one before it (see
docs/ARCHITECTURE.md): the stem, every section ``model.section(k, h)``, and every exit
``model.exit_logits(k, h)`` (attention + head for shallow exits, counted separately; the backbone's
own post + head for the last one). From those:

* ``backbone_macs``: stem + all sections + the final head (the plain network);
* per exit, ``macs_cumulative``: what an image answered there costs in the cascade: the backbone up to
  the split plus every shallow exit evaluated on the way, its own included (the last exit: the full
  backbone plus all shallow exits).

Nothing is silently zero. Operators are sorted into: counted (fvcore's handles plus
``scaled_dot_product_attention`` and ``baddbmm`` added here); ``not_counted_elementwise`` (pointwise
ops, reductions and pooling: no multiply-accumulates by the MAC convention, listed with call
counts); ``not_counted_data_movement`` (views, reshapes, copies: no arithmetic); and
``uncounted_ops``: anything else, which may hide real work and is reported as such.

Used by ``scan profile`` and by ``scan calibrate`` (``cascade_costs``). Imports torch/fvcore only
inside functions.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from ..devices import torch_threads

UNITS = "MACs"
CACHE_SCHEMA = 1  # bump when the cached report's meaning changes

# Ops with no arithmetic at all (shape, memory, identity in eval).
DATA_MOVEMENT_OPS = frozenset("""
Int ScalarImplicit _unsafe_view alias arange as_strided cat chunk clone constant_pad_nd contiguous copy_
detach dim dropout dropout_ alpha_dropout feature_dropout empty empty_like expand expand_as fill_ flatten
flip full full_like gather index index_put_ index_select lift_fresh linspace masked_select movedim narrow
new_empty new_full new_ones new_zeros nonzero numel ones ones_like pad permute pixel_shuffle pixel_unshuffle
repeat reshape roll scalar_tensor select size slice split split_with_sizes squeeze stack t tensor tile to
transpose type_as unbind unflatten unsqueeze unsqueeze_ view view_as zero_ zeros zeros_like
""".split())

# Pointwise ops, reductions and pooling: additions/comparisons/nonlinearities, not multiply-accumulates.
ELEMENTWISE_OPS = frozenset("""
__and__ __or__ abs add add_ addcmul amax amin argmax argmin avg_pool1d avg_pool2d avg_pool3d
adaptive_max_pool1d adaptive_max_pool2d bitwise_not ceil clamp clamp_ clamp_max clamp_min cumsum div div_
elu elu_ eq erf exp floor floor_divide ge gelu gelu_ gt hardsigmoid hardsigmoid_ hardswish hardswish_
hardtanh hardtanh_ le leaky_relu leaky_relu_ lerp linalg_vector_norm log log_softmax logical_and
logical_not logical_or lt masked_fill masked_fill_ max max_pool1d max_pool2d max_pool3d maximum mean min
minimum mish mul mul_ ne neg norm pow reciprocal relu relu_ relu6 remainder round rsqrt rsub sigmoid
sigmoid_ sign silu silu_ softmax _softmax softplus sort sqrt square std sub sub_ sum tanh tanh_ topk var
where
""".split())


# -- op handles ---------------------------------------------------------------------------------
def _shape(value) -> list[int]:
    from fvcore.nn.jit_handles import get_shape

    return list(get_shape(value))


def sdpa_macs(inputs, outputs) -> int:
    """``aten::scaled_dot_product_attention(q, k, v, ...)``: QK^T and attn @ V.

    MACs = B * heads * Lq * Lk * (Dqk + Dv), where B * heads is every leading dim of q (grouped-query
    attention shares k/v heads but each query head still does its own products). The softmax and
    scaling are elementwise and not counted."""
    q, k, v = (_shape(inputs[i]) for i in range(3))
    lead = math.prod(q[:-2])
    lq, dqk = q[-2], q[-1]
    lk, dv = k[-2], v[-1]
    return int(lead * lq * lk * (dqk + dv))


def baddbmm_macs(inputs, outputs) -> int:
    """``aten::baddbmm(input, batch1, batch2, ...)``: the bmm part, B * N * M * P."""
    b1, b2 = _shape(inputs[1]), _shape(inputs[2])
    return int(b1[0] * b1[1] * b1[2] * b2[2])


def default_handles() -> dict[str, Callable]:
    """Handles added on top of fvcore's defaults (conv, linear, matmul, einsum, norms, ...)."""
    return {"aten::scaled_dot_product_attention": sdpa_macs, "aten::baddbmm": baddbmm_macs}


def classify_op(kind: str) -> str:
    """'elementwise', 'data_movement' or 'uncounted' for an operator fvcore had no handle for."""
    name = kind.split("::", 1)[-1]
    if kind.startswith("aten::") and name in ELEMENTWISE_OPS:
        return "elementwise"
    if kind.startswith("aten::") and name in DATA_MOVEMENT_OPS:
        return "data_movement"
    return "uncounted"


# -- counting one piece -------------------------------------------------------------------------
@dataclass
class PieceCount:
    """fvcore's count for one piece: MACs, MACs per operator, and every operator it did not count."""

    macs: int = 0
    by_operator: Counter = field(default_factory=Counter)
    uncounted: Counter = field(default_factory=Counter)
    elementwise: Counter = field(default_factory=Counter)
    data_movement: Counter = field(default_factory=Counter)

    def __iadd__(self, other: "PieceCount") -> "PieceCount":
        self.macs += other.macs
        for name in ("by_operator", "uncounted", "elementwise", "data_movement"):
            getattr(self, name).update(getattr(other, name))
        return self


def _fvcore_analysis():
    with warnings.catch_warnings():  # fvcore's import touches the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from fvcore.nn import FlopCountAnalysis
    return FlopCountAnalysis


class _Capture:
    """Holds the output a piece produced while it was traced (tracing runs the real computation)."""

    value = None


def _as_module(fn, owner=None, capture: Optional[_Capture] = None):
    import torch.nn as nn

    if isinstance(fn, nn.Module) and capture is None:
        return fn

    class _Piece(nn.Module):
        def __init__(self):
            super().__init__()
            if isinstance(fn, nn.Module):
                self.inner = fn
            elif owner is not None:
                self.owner = owner  # registered so the trace sees its parameters as the module's

        def forward(self, *args):
            out = fn(*args)
            if capture is not None:
                capture.value = out
            return out

    return _Piece()


def count_piece(fn, *inputs, handles: Optional[dict] = None, owner=None, capture: Optional[_Capture] = None) -> PieceCount:
    """Count one module (or callable, with ``owner`` the module it uses) on real ``inputs``.

    ``handles`` replaces the extra handles (default: ``default_handles()``); pass ``{}`` for fvcore's
    defaults only. Every operator without a handle is listed, none dropped. ``capture.value`` gets
    the piece's output (so the next piece can be fed it without another forward)."""
    import torch

    FlopCountAnalysis = _fvcore_analysis()
    module = _as_module(fn, owner, capture)
    analysis = FlopCountAnalysis(module, tuple(inputs))
    analysis.set_op_handle(**(default_handles() if handles is None else handles))
    analysis._ignored_ops = set()  # fvcore would skip relu, view, ... silently: make them visible
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        by_op = Counter({k: int(v) for k, v in analysis.by_operator().items()})
        skipped = analysis.unsupported_ops()
    piece = PieceCount(macs=int(sum(by_op.values())), by_operator=by_op)
    for kind, calls in skipped.items():
        getattr(piece, {"elementwise": "elementwise", "data_movement": "data_movement"}.get(classify_op(kind), "uncounted"))[kind] += int(calls)
    return piece


def _params(module) -> int:
    return int(sum(p.numel() for p in module.parameters())) if module is not None else 0


def _params_touched(fn, inputs, root) -> int:
    """Parameters of the modules under ``root`` whose forward runs in ``fn(*inputs)``."""
    import torch

    touched, handles = [], []
    for mod in root.modules():
        if any(True for _ in mod.parameters(recurse=False)):
            handles.append(mod.register_forward_pre_hook(lambda m, a: touched.append(m)))
    try:
        with torch.no_grad():
            fn(*inputs)
    finally:
        for h in handles:
            h.remove()
    seen = {id(p): p.numel() for m in touched for p in m.parameters(recurse=False)}
    return int(sum(seen.values()))


# -- the report ---------------------------------------------------------------------------------
@dataclass
class ExitCost:
    index: int  # 0-based
    name: str  # "1/4"
    split: str  # unit after which the exit sits; "final" for the backbone's own head
    backbone_macs_to_split: int  # stem + sections 0..k
    attention_macs: int
    head_macs: int  # the exit head alone (the last exit: the backbone's post + head)
    exit_macs: int  # attention + head
    macs_cumulative: int  # answering here in the cascade
    attention_params: int
    head_params: int
    params: int  # attention + head: what this exit adds (the last: the backbone's post + head)

    def to_dict(self) -> dict:
        return asdict(self)


NOTES = {
    "units": "MACs: one multiply-accumulate counts 1 (fvcore's 'flop'); GFLOPs = 2 x GMACs",
    "counting": "fvcore at batch 1, each piece fed the real activation; batch norm (2 per element in eval) and "
                "adaptive average pooling (1 per input element) are counted as fvcore does, so totals match timm's "
                "published GMACs",
    "exits": "backbone_macs_to_split = stem + sections up to the split; attention_macs and head_macs are the exit's "
             "attention module and head alone, exit_macs their sum (last exit: the backbone's post + head); "
             "macs_cumulative = answering there in the cascade (every exit on the way included); params = what the "
             "exit adds (last exit: the parameters its post + head use)",
    "not_counted_elementwise": "pointwise ops, reductions and pooling: no multiply-accumulates by the MAC convention",
    "not_counted_data_movement": "views, reshapes, copies: no arithmetic",
    "uncounted_ops": "operators with no MAC handle: they may hide real work, so the totals are a lower bound",
}


@dataclass
class MacReport:
    input_size: int
    stem_macs: int
    section_macs: list[int]
    exits: list[ExitCost]
    backbone_macs: int  # stem + all sections + final head: the plain network
    backbone_params: int
    by_operator: dict[str, int]
    uncounted_ops: dict[str, int]
    not_counted_elementwise: dict[str, int]
    not_counted_data_movement: dict[str, int]
    backbone_id: Optional[str] = None
    batch_size: int = 1
    units: str = UNITS

    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @property
    def cumulative(self) -> list[int]:
        return [e.macs_cumulative for e in self.exits]

    @property
    def shallow_heads(self) -> list[int]:
        """Each shallow exit's own MACs (attention + head): what switching it off saves."""
        return [e.exit_macs for e in self.exits[:-1]]

    @property
    def shallow_exit_macs(self) -> int:
        """Every shallow exit (attention + head) together: the cascade's overhead when all run."""
        return int(sum(e.exit_macs for e in self.exits[:-1]))

    @property
    def shallow_exit_params(self) -> int:
        return int(sum(e.params for e in self.exits[:-1]))

    @property
    def heads_overhead(self) -> float:
        """Shallow exits' MACs as a fraction of the plain backbone's."""
        return self.shallow_exit_macs / self.backbone_macs if self.backbone_macs else float("nan")

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["exits"] = [e.to_dict() for e in self.exits]
        doc.update(shallow_exit_macs=self.shallow_exit_macs, shallow_exit_params=self.shallow_exit_params,
                   heads_overhead=self.heads_overhead,
                   notes=NOTES)
        return doc

    @classmethod
    def from_dict(cls, doc: dict) -> "MacReport":
        names = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in doc.items() if k in names}
        kwargs["exits"] = [ExitCost(**e) for e in doc["exits"]]
        return cls(**kwargs)


def count_macs(model, input_size: int, handles: Optional[dict] = None) -> MacReport:
    """Count a ``ScanModel`` piece by piece at batch 1 on ``input_size`` x ``input_size`` inputs.

    Each piece is fed the real activation of the previous one (a forward on a random image).
    ``handles``: extra op handles (default ``default_handles()``; ``{}`` = fvcore's defaults only)."""
    was_training = model.training
    model.eval()
    # batch-1 tracing gains little from threads and suffers badly when the cores are shared
    with torch_threads(1):
        try:
            return _count_macs(model, input_size, handles)
        finally:
            model.train(was_training)


def _count_macs(model, input_size: int, handles: Optional[dict]) -> MacReport:
    import torch

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, input_size, input_size, generator=gen).to(device=device, dtype=dtype)
    total = PieceCount()

    def run(fn, *inputs):
        capture = _Capture()
        piece = count_piece(fn, *inputs, handles=handles, owner=model, capture=capture)
        nonlocal total
        total += piece
        out = capture.value
        if not isinstance(out, torch.Tensor):
            with torch.no_grad():
                out = fn(*inputs)
        return piece.macs, out.detach()

    stem_macs, h = run(model.stem, x)
    K = model.num_exits
    section_macs, exits = [], []
    to_split = stem_macs
    cumulative_heads = 0
    for k in range(K):
        macs, h = run(lambda t, k=k: model.section(k, t), h)
        section_macs.append(macs)
        to_split += macs
        if k < K - 1:
            with torch.no_grad():  # tokens -> map is reshaping only; kept out of the trace (shapes stay ints)
                fmap = model.backbone.to_feature_map(h)
            att_macs, fmap = run(model.attentions[k], fmap)
            head_macs, _ = run(model.heads[k], fmap)
            att_params, head_params = _params(model.attentions[k]), _params(model.heads[k])
            name_split = model.split_modules[k]
        else:
            att_macs = 0
            head_macs, _ = run(lambda t: model.exit_logits(K - 1, t), h)
            att_params = 0
            head_params = _params_touched(lambda t: model.exit_logits(K - 1, t), (h,), model.backbone)
            name_split = "final"
        cumulative_heads += att_macs + head_macs
        exits.append(ExitCost(
            index=k, name=f"{k + 1}/{K}", split=name_split, backbone_macs_to_split=int(to_split),
            attention_macs=int(att_macs), head_macs=int(head_macs), exit_macs=int(att_macs + head_macs),
            macs_cumulative=int(to_split + cumulative_heads), attention_params=att_params,
            head_params=head_params, params=att_params + head_params))
    backbone_macs = stem_macs + sum(section_macs) + exits[-1].exit_macs
    return MacReport(
        input_size=int(input_size), stem_macs=int(stem_macs), section_macs=[int(m) for m in section_macs],
        exits=exits, backbone_macs=int(backbone_macs), backbone_params=_params(model.backbone),
        by_operator=dict(sorted(total.by_operator.items())), uncounted_ops=dict(sorted(total.uncounted.items())),
        not_counted_elementwise=dict(sorted(total.elementwise.items())),
        not_counted_data_movement=dict(sorted(total.data_movement.items())),
        backbone_id=getattr(model, "backbone_id", None),
    )
