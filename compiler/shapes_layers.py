"""Shape and dtype rules of the layers Conv1D, GroupNorm and ConvTranspose2d and the op
adaptive_avg_pool2d (merged into `shapes`).

    Conv1D          [..., in] → [..., out]            HF's layout: y = x W + b, W stored [in, out]
    GroupNorm       [N, C, *] → [N, C, *]             C split into groups, each normalized
    ConvTranspose2d [N, in, H, W] → [N, out, H', W']  H' = (H − 1)·s − 2p + k + output_padding
    BatchNorm1d     [N, C] or [N, C, L] → unchanged   per channel: batch statistics, or running ones in eval
    BatchNorm2d     [N, C, H, W] → unchanged
    adaptive_avg_pool2d [N, C, H, W] → [N, C, h, w]   PyTorch's bins; ONNX needs h, w dividing H, W
                                                      (or h = w = 1, a global average)
    RotaryEmbedding [..., T, E] → [T, head_dim] twice  cos, sin for positions 0 … T−1, in the input's dtype
"""
from __future__ import annotations

from . import ir
from .shapes import Ctx, _f32_in_onnxruntime, _floats, _fmt, _last_dim, _layer_dtype, _no_f64_kernel, same

T = ir.TensorType


def _conv1d(ctx: Ctx) -> T:
    x = _last_dim(ctx, ctx.layer.config["in_features"], "in_features (nx) =")
    return T(x.dtype, x.shape[:-1] + (ctx.layer.config["out_features"],))


def _group_norm(ctx: Ctx) -> T:
    x, c = ctx.ins[0], ctx.layer.config
    if len(x.shape) < 2 or not same(x.shape[1], c["num_channels"]):
        ctx.fail(f"GroupNorm '{ctx.layer.path}' expects [N, {c['num_channels']}, …], got {_fmt(x.shape)}")
    return x


def _batch_norm(ranks: tuple[int, ...], layout: str):
    def rule(ctx: Ctx) -> T:
        x, c = ctx.ins[0], ctx.layer.config
        if len(x.shape) not in ranks or not same(x.shape[1], c["num_features"]):
            want = layout.replace("C", str(c["num_features"]))
            ctx.fail(f"{ctx.layer.kind} '{ctx.layer.path}' expects {want}, got {_fmt(x.shape)}",
                     hint=f"num_features must be the channel count (dim 1 of the input, {_fmt(x.shape)})"
                     if len(x.shape) in ranks else None)
        return x

    return rule


def _batch_norm_dtype(ctx: Ctx) -> None:
    """The input must have the layer's dtype, its parameters' and running statistics' (with or
    without `affine`): PyTorch does not promote inside the layer."""
    want = ctx.layer.config.get("dtype") or "f32"
    if ctx.ins[0].dtype != want:
        ctx.fail(f"{ctx.layer.kind} '{ctx.layer.path}' has {want} parameters but its input is {ctx.ins[0].dtype}",
                 hint=f"declare the model input as {want}[…]")


def _transposed_size(ctx: Ctx, size, k: int, s: int, p: int, out_pad: int) -> ir.Dim:
    if not isinstance(size, int):
        return f"({size}-1)*{s}-{2 * p}+{k + out_pad}"
    out = (size - 1) * s - 2 * p + k + out_pad
    if out < 1:
        ctx.fail(f"ConvTranspose2d '{ctx.layer.path}': padding {p} leaves no output for input size {size}")
    return out


def _conv_transpose2d(ctx: Ctx) -> T:
    x, c = ctx.ins[0], ctx.layer.config
    if len(x.shape) != 4 or not same(x.shape[1], c["in_channels"]):
        ctx.fail(f"ConvTranspose2d '{ctx.layer.path}' expects [N, {c['in_channels']}, H, W], got {_fmt(x.shape)}")
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = c["kernel_size"], c["stride"], c["padding"], c["output_padding"]
    return T(x.dtype, (x.shape[0], c["out_channels"], _transposed_size(ctx, x.shape[2], kh, sh, ph, oh),
                       _transposed_size(ctx, x.shape[3], kw, sw, pw, ow)))


def _adaptive_avg_pool2d(ctx: Ctx) -> T:
    x = ctx.ins[0]
    if len(x.shape) != 4:
        ctx.fail(f"adaptive_avg_pool2d expects [N, C, H, W], got {_fmt(x.shape)}")
    h, w = ctx.node.attrs["output_size"]
    if (h, w) != (1, 1):
        for size, out in zip(x.shape[2:], (h, w)):
            if not isinstance(size, int) or size % out:
                ctx.fail(f"adaptive_avg_pool2d to {h}×{w} of {_fmt(x.shape)}: each output size must divide a fixed "
                         "input size (the ONNX export is an AveragePool)", hint="pool to 1×1, or fix H and W")
    return T(x.dtype, x.shape[:2] + (h, w))


def _rotary_embedding(ctx: Ctx) -> T:
    """Either value (cos, sin): one row per position of the input's dim −2, the sequence dim of
    [B, T, d] and of [B, heads, T, head_dim] alike, so it broadcasts against both."""
    x = ctx.ins[0]
    if len(x.shape) < 2:
        ctx.fail(f"RotaryEmbedding '{ctx.layer.path}' takes its positions from dim −2 of its input: it needs "
                 f"[…, T, E], got {_fmt(x.shape)}")
    return T(x.dtype, (x.shape[-2], ctx.layer.config["head_dim"]))


LAYER_SHAPES = {"Conv1D": _conv1d, "GroupNorm": _group_norm, "ConvTranspose2d": _conv_transpose2d,
                "adaptive_avg_pool2d": _adaptive_avg_pool2d,
                "BatchNorm1d": _batch_norm((2, 3), "[N, C] or [N, C, L]"), "BatchNorm2d": _batch_norm((4,), "[N, C, H, W]"),
                "RotaryEmbedding": _rotary_embedding}
LAYER_DTYPES = {"Conv1D": _layer_dtype, "GroupNorm": _layer_dtype, "ConvTranspose2d": _no_f64_kernel("ConvTranspose"),
                "adaptive_avg_pool2d": _f32_in_onnxruntime("AveragePool"),  # GlobalAveragePool too
                "BatchNorm1d": _batch_norm_dtype, "BatchNorm2d": _batch_norm_dtype,
                "RotaryEmbedding": _floats}  # computed in f32, returned in the input's dtype
