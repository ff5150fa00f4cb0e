"""Shape and dtype rules of `sdpa`, scaled dot-product attention (merged into `shapes`).

    sdpa(q [..., Hq, L, E], k [..., Hk, S, E], v [..., Hk, S, Ev], mask, causal, scale) → [..., Hq, L, Ev]

as PyTorch's `F.scaled_dot_product_attention`: the leading dims of q, k and v agree; a head count
Hq that is a multiple of Hk is grouped-query attention (each key/value head serves Hq / Hk query
heads; `enable_gqa`); a mask broadcasts to [..., Hq, L, S], `bool` (true: may attend) or additive
in q's dtype; `causal` keeps key j ≤ query i (top-left aligned when L ≠ S, as PyTorch) and takes no
mask beside it; `scale` defaults to 1/√E.
"""
from __future__ import annotations

from . import ir
from .shapes import FLOATS, Ctx, _fmt, same
from .shapes_math import broadcasts_to

T = ir.TensorType


def _sdpa(ctx: Ctx) -> T:
    q, k, v = ctx.ins[:3]
    if not (len(q.shape) == len(k.shape) == len(v.shape) >= 2):
        ctx.fail(f"sdpa: q, k and v need one rank of at least 2, got {q}, {k} and {v}",
                 hint="split heads first: transpose(reshape(x, [B, T, heads, -1]), 1, 2)")
    if not same(q.shape[-1], k.shape[-1]):
        ctx.fail(f"sdpa: q and k differ in their last dim ({q.shape[-1]} and {k.shape[-1]})")
    if not same(k.shape[-2], v.shape[-2]):
        ctx.fail(f"sdpa: k and v differ in their key length ({k.shape[-2]} and {v.shape[-2]})")
    if len(q.shape) >= 3:
        hq, hk, hv = q.shape[-3], k.shape[-3], v.shape[-3]
        if not same(hk, hv):
            ctx.fail(f"sdpa: k and v have different head counts ({hk} and {hv})")
        if isinstance(hq, int) and isinstance(hk, int) and hq % hk:
            ctx.fail(f"sdpa: {hq} query heads are not a multiple of {hk} key/value heads")
        if not isinstance(hq, int) and not same(hq, hk):
            ctx.fail(f"sdpa: the head counts {hq} and {hk} must be equal or fixed numbers")
        lead = q.shape[:-3]
        if any(not same(a, b) for a, b in zip(lead, k.shape[:-3])) or any(
                not same(a, b) for a, b in zip(lead, v.shape[:-3])):
            ctx.fail(f"sdpa: the leading dims of q, k and v differ ({_fmt(q.shape)}, {_fmt(k.shape)}, {_fmt(v.shape)})")
    if len(ctx.ins) == 4:
        if ctx.node.attrs["causal"]:
            ctx.fail("sdpa takes a mask or causal=true, not both", hint="fold the causal mask into yours")
        scores = q.shape[:-1] + (k.shape[-2],)
        mask = ctx.ins[3]
        if not broadcasts_to(mask.shape, scores):
            ctx.fail(f"sdpa: the mask {mask} must broadcast to the scores' shape {_fmt(scores)}",
                     hint="unsqueeze a [B, S] padding mask to [B, 1, 1, S]")
    return T(q.dtype, q.shape[:-1] + (v.shape[-1],))


def _sdpa_dtypes(ctx: Ctx) -> None:
    q, k, v = ctx.ins[:3]
    if q.dtype not in FLOATS:
        ctx.fail(f"sdpa needs floating-point q, k and v, got {q.dtype}", hint='cast(x, "f32")')
    if not q.dtype == k.dtype == v.dtype:
        ctx.fail(f"sdpa: q, k and v differ in dtype ({q.dtype}, {k.dtype}, {v.dtype})", hint='cast(x, "f32")')
    if len(ctx.ins) == 4 and ctx.ins[3].dtype not in ("bool", q.dtype):
        ctx.fail(f"sdpa: the mask must be bool or {q.dtype}, got {ctx.ins[3].dtype}",
                 hint=f'cast(mask, "{q.dtype}") for an additive mask, or compare for a bool one')


ATTENTION_SHAPES = {"sdpa": _sdpa}
ATTENTION_DTYPES = {"sdpa": _sdpa_dtypes}
