"""What each IR op and layer kind becomes in PyTorch source: two tables, one row per op/kind.

`TORCH_EMIT[op](call)` renders the right-hand side of the one statement a node becomes;
`TORCH_LAYER[kind](args, extra)` renders a layer's constructor. The trailing comment on each
row is the formula it implements. Rows see only rendered strings (argument names, the bound
tensor expressions of a layer's slots), never the IR's sharing tables: the code generator
resolves those, so a row cannot get sharing wrong.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tiec.compiler.catalog import check_table
from tiec.compiler.ir import frozen

from .naming import literal


@dataclass(frozen=True)
class Call:
    """One node to render. For a layer op, `ref` is the module expression (`self.blk[0].up`)
    and `slots` is None when the module can be called as is, else slot → tensor expression for
    the functional form (a slot shared transposed has no tensor of its own)."""

    args: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=frozen)
    ref: str = ""  # param: the bound tensor expression; layer op: the module expression
    config: Mapping[str, Any] = field(default_factory=frozen)
    slots: Mapping[str, str] | None = None
    types: tuple[Any, ...] = ()  # an op's input types, where the checker inferred them


def _module_or(functional: Callable[[Call], str]) -> Callable[[Call], str]:
    """A layer's row: the module called as it is, or, where a slot is bound elsewhere (a shared or
    transposed tensor), the functional form over the bound tensors."""
    def render(c: Call) -> str:
        return f"{c.ref}({c.args[0]})" if c.slots is None else functional(c)

    return render


def _slot(c: Call, name: str) -> str:
    return c.slots.get(name, "None") if c.slots is not None else "None"


def _gelu(c: Call) -> str:
    approximate = c.attrs.get("approximate", "none")
    extra = "" if approximate == "none" else f", approximate={literal(approximate)}"
    return f"F.gelu({c.args[0]}{extra})"


def _reshape(c: Call) -> str:
    x = c.args[0]
    # 0, or a symbol where the input has it (the structured IR keeps `B`), copies the input's dim
    dims = [f"{x}.shape[{i}]" if d == 0 or isinstance(d, str) else str(d) for i, d in enumerate(c.attrs["shape"])]
    return f"{x}.reshape({', '.join(dims)})" if dims else f"{x}.reshape(())"


TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i32": "int32",
                "i64": "int64", "bool": "bool"}


def _sdpa(c: Call) -> str:
    q, k, v = c.args[:3]
    extra = [f"attn_mask={c.args[3]}"] if len(c.args) == 4 else []
    extra += ["is_causal=True"] if c.attrs["causal"] else []
    extra += [f"scale={literal(c.attrs['scale'])}"] if c.attrs["scale"] is not None else []
    heads = [t.shape[-3] for t in c.types[:2] if t is not None and len(t.shape) >= 3]
    if len(heads) == 2 and heads[0] != heads[1]:  # grouped-query attention: fewer key/value heads
        extra.append("enable_gqa=True")
    return f"F.scaled_dot_product_attention({', '.join([q, k, v, *extra])})"


def _along(c: Call, item: str) -> str:
    """x[…] with `item` at dim `c.attrs['dim']`: `x[:, 1:3]`, or from the end `x[..., 0]`."""
    d = c.attrs["dim"]
    items = [":"] * d + [item] if d >= 0 else ["...", item] + [":"] * (-d - 1)
    return f"{c.args[0]}[{', '.join(items)}]"


def _slice(c: Call) -> str:
    a = c.attrs
    start, end = "" if a["start"] == 0 else str(a["start"]), "" if a["end"] is None else str(a["end"])
    return _along(c, f"{start}:{end}" + ("" if a["step"] == 1 else f":{a['step']}"))


def _number(v: float) -> str:
    """A whole number as an int literal: torch would turn an integer tensor float beside a float."""
    return literal(int(v) if float(v).is_integer() else v)


def _function(fn: str) -> Callable[[Call], str]:
    return lambda c: f"torch.{fn}({c.args[0]})"


def _infix(symbol: str) -> Callable[[Call], str]:
    return lambda c: f"{c.args[0]} {symbol} {c.args[1]}"


def _clamp(c: Call) -> str:
    bounds = [f"{k}={_number(c.attrs[k])}" for k in ("min", "max") if c.attrs[k] is not None]
    return f"torch.clamp({c.args[0]}, {', '.join(bounds)})"


def _pool(fn: str) -> Callable[[Call], str]:
    def render(c: Call) -> str:
        a = c.attrs
        return f"F.{fn}({c.args[0]}, {literal(a['kernel'])}, {literal(a['stride'])}, {literal(a['padding'])})"

    return render


def _normalized(c: Call) -> str:
    shape = c.config["normalized_shape"]
    return literal(tuple(shape) if isinstance(shape, (list, tuple)) else (shape,))


@_module_or
def _linear(c: Call) -> str:
    return f"F.linear({c.args[0]}, {_slot(c, 'weight')}, {_slot(c, 'bias')})"


@_module_or
def _conv2d(c: Call) -> str:
    stride, padding = literal(c.config.get("stride", 1)), literal(c.config.get("padding", 0))
    return f"F.conv2d({c.args[0]}, {_slot(c, 'weight')}, {_slot(c, 'bias')}, stride={stride}, padding={padding})"


@_module_or
def _embedding(c: Call) -> str:
    return f"F.embedding({c.args[0]}, {_slot(c, 'weight')})"


@_module_or
def _layer_norm(c: Call) -> str:
    eps = literal(c.config.get("eps", 1e-5))
    return f"F.layer_norm({c.args[0]}, {_normalized(c)}, {_slot(c, 'weight')}, {_slot(c, 'bias')}, {eps})"


@_module_or
def _rms_norm(c: Call) -> str:
    return f"F.rms_norm({c.args[0]}, {_normalized(c)}, {_slot(c, 'weight')}, {literal(c.config.get('eps'))})"


@_module_or
def _conv1d(c: Call) -> str:
    return f"{c.args[0]} @ {_slot(c, 'weight')} + {_slot(c, 'bias')}"


@_module_or
def _group_norm(c: Call) -> str:
    eps = literal(c.config.get("eps", 1e-5))
    return f"F.group_norm({c.args[0]}, {c.config['num_groups']}, {_slot(c, 'weight')}, {_slot(c, 'bias')}, {eps})"


@_module_or
def _conv_transpose2d(c: Call) -> str:
    cfg = {k: literal(c.config[k]) for k in ("stride", "padding", "output_padding")}
    return (f"F.conv_transpose2d({c.args[0]}, {_slot(c, 'weight')}, {_slot(c, 'bias')}, stride={cfg['stride']}, "
            f"padding={cfg['padding']}, output_padding={cfg['output_padding']})")


def _attention(c: Call) -> str:
    if c.slots is not None:  # the code generator rejects transposed attention slots first
        raise ValueError(f"{c.ref}: SelfAttention has no functional form here")
    x = c.args[0]
    mask = f", attn_mask=causal_mask({x})" if c.config.get("causal") else ""
    return f"{c.ref}({x}, {x}, {x}, need_weights=False{mask})[0]"


def _never_called(c: Call) -> str:
    raise AssertionError("a free parameter is never called: expressions read it through a param node")


TORCH_EMIT: Mapping[str, Callable[[Call], str]] = {
    "param": lambda c: c.ref,  # W, or W.T (node's `transposed` XOR the share's orientation)
    "Parameter": _never_called,  # a free parameter is read by `param` nodes, never called
    "const": lambda c: literal(c.attrs["value"]),  # the literal
    "add": lambda c: f"{c.args[0]} + {c.args[1]}",  # a + b, broadcasting
    "sub": lambda c: f"{c.args[0]} - {c.args[1]}",  # a - b
    "mul": lambda c: f"{c.args[0]} * {c.args[1]}",  # a * b
    "div": lambda c: f"{c.args[0]} / {c.args[1]}",  # a / b (true division)
    "matmul": lambda c: f"{c.args[0]} @ {c.args[1]}",  # a @ b
    "neg": lambda c: f"-{c.args[0]}",  # -x
    "relu": lambda c: f"F.relu({c.args[0]})",  # max(x, 0)
    "tanh": lambda c: f"torch.tanh({c.args[0]})",  # tanh x
    "sigmoid": lambda c: f"torch.sigmoid({c.args[0]})",  # 1 / (1 + e^-x)
    "silu": lambda c: f"F.silu({c.args[0]})",  # x · sigmoid(x)
    "gelu": _gelu,  # x · Φ(x), or its tanh approximation
    "softmax": lambda c: f"F.softmax({c.args[0]}, dim={c.attrs['dim']})",  # e^x / Σ e^x along dim
    "log_softmax": lambda c: f"F.log_softmax({c.args[0]}, dim={c.attrs['dim']})",  # x - logsumexp(x)
    "flatten": lambda c: f"{c.args[0]}.flatten({c.attrs['start_dim']}, {c.attrs['end_dim']})",  # merge dims
    "reshape": _reshape,  # ONNX Reshape: 0 → x.shape[i], -1 inferred
    "transpose": lambda c: f"{c.args[0]}.transpose({c.attrs['dim0']}, {c.attrs['dim1']})",  # swap two dims
    "max_pool2d": _pool("max_pool2d"),  # max over each window
    "avg_pool2d": _pool("avg_pool2d"),  # mean over each window (padding counted, torch's default)
    "mean": lambda c: f"{c.args[0]}.mean(dim={c.attrs['dim']}, keepdim={c.attrs['keepdim']})",  # Σx / n
    "concat": lambda c: f"torch.cat([{', '.join(c.args)}], dim={c.attrs['dim']})",  # [x1; …; xn]
    "cosine_similarity": lambda c: (  # a·b / (max(‖a‖, eps) · max(‖b‖, eps)), as torch 2.x computes it
        f"F.cosine_similarity({c.args[0]}, {c.args[1]}, dim={c.attrs['dim']}, eps={literal(c.attrs['eps'])})"
    ),
    "positions": lambda c: f"torch.arange({c.args[0]}.shape[-1], device={c.args[0]}.device)",  # 0 … T-1
    **{op: _function(op)  # exp log sqrt rsqrt sin cos erf abs, elementwise
       for op in ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "erf", "abs")},
    "pow": lambda c: f"torch.pow({c.args[0]}, {c.args[1]})",  # x ** e
    "minimum": lambda c: f"torch.minimum({c.args[0]}, {c.args[1]})",  # min(a, b) elementwise
    "maximum": lambda c: f"torch.maximum({c.args[0]}, {c.args[1]})",  # max(a, b) elementwise
    "clamp": _clamp,  # min(max(x, lo), hi)
    **{op: _infix(sym)  # a < b …, bool
       for op, sym in (("eq", "=="), ("ne", "!="), ("lt", "<"), ("le", "<="), ("gt", ">"), ("ge", ">="))},
    "logical_and": lambda c: f"torch.logical_and({c.args[0]}, {c.args[1]})",  # a ∧ b
    "logical_or": lambda c: f"torch.logical_or({c.args[0]}, {c.args[1]})",  # a ∨ b
    "logical_not": lambda c: f"torch.logical_not({c.args[0]})",  # ¬a
    "where": lambda c: f"torch.where({c.args[0]}, {c.args[1]}, {c.args[2]})",  # condition ? a : b
    "masked_fill": lambda c: f"{c.args[0]}.masked_fill({c.args[1]}, {_number(c.attrs['value'])})",  # mask ? v : x
    "cast": lambda c: f"{c.args[0]}.to(torch.{TORCH_DTYPES[c.attrs['dtype']]})",  # x in another dtype
    "cast_like": lambda c: f"{c.args[0]}.to({c.args[1]}.dtype)",  # x in other's dtype
    "sdpa": _sdpa,  # softmax(q kᵀ · scale [+ mask]) v, key/value heads repeated for grouped queries
    "slice": _slice,  # x[..., start:end:step] along dim
    "select": lambda c: _along(c, str(c.attrs["index"])),  # x[..., i] along dim
    "unsqueeze": lambda c: f"{c.args[0]}.unsqueeze({c.attrs['dim']})",  # a dim of 1 inserted
    "squeeze": lambda c: f"{c.args[0]}.squeeze({c.attrs['dim']})",  # the dim of 1 removed
    "gather": lambda c: f"torch.gather({c.args[0]}, {c.attrs['dim']}, {c.args[1]})",  # x[index] along dim, elementwise
    "index_select": lambda c: f"torch.index_select({c.args[0]}, {c.attrs['dim']}, {c.args[1]})",  # whole slices
    "chunk": lambda c: f"{c.args[0]}.chunk({c.attrs['chunks']}, dim={c.attrs['dim']})[{c.attrs['index']}]",
    "split": lambda c: f"{c.args[0]}.split({list(c.attrs['sizes'])}, dim={c.attrs['dim']})[{c.attrs['index']}]",
    "Linear": _linear,  # x Wᵀ + b
    "Conv2d": _conv2d,  # Σ W ⋆ x + b
    "Embedding": _embedding,  # W[x]
    "LayerNorm": _layer_norm,  # (x - μ) / √(σ² + eps) · w + b
    "RMSNorm": _rms_norm,  # x / √(mean(x²) + eps) · w
    "SelfAttention": _attention,  # softmax(QKᵀ/√d [+ causal mask]) V, then out_proj
    "Dropout": lambda c: f"{c.ref}({c.args[0]})",  # x · mask / (1 - p) in training
    "Conv1D": _conv1d,  # x W + b, W stored [in, out]
    "GroupNorm": _group_norm,  # per group: (x - μ) / √(σ² + eps), then · w + b per channel
    "ConvTranspose2d": _conv_transpose2d,  # the adjoint of conv2d: Σ W ⋆ᵀ x + b
    # nn.BatchNorm1d/2d itself, so train and eval (batch or running statistics, and their update) are
    # PyTorch's: its weight and bias are 1-D, never shared transposed, so the module is always whole
    **{kind: lambda c: f"{c.ref}({c.args[0]})" for kind in ("BatchNorm1d", "BatchNorm2d")},  # (x - μ) / √(σ² + eps) · w + b
    "adaptive_avg_pool2d": lambda c: f"F.adaptive_avg_pool2d({c.args[0]}, {literal(c.attrs['output_size'])})",
    "RotaryEmbedding": lambda c: f"{c.ref}({c.args[0]})[{c.attrs['index']}]",  # cos (0) or sin (1) of t · inv_freq
}


def _kwargs(args: Mapping[str, str], defaults: Mapping[str, str]) -> list[str]:
    return [f"{k}={args[k]}" for k in defaults if k in args and args[k] != defaults[k]]


def _ctor(cls: str, positional: tuple[str, ...], defaults: Mapping[str, str]) -> Callable[..., str]:
    def render(args: Mapping[str, str], extra: tuple[str, ...] = ()) -> str:
        return f"nn.{cls}({', '.join([*(args[k] for k in positional), *_kwargs(args, defaults), *extra])})"

    return render


def _parameter(args: Mapping[str, str], extra: tuple[str, ...] = ()) -> str:
    """A free parameter: `init` is a literal from a closed list ("zeros", "ones", "uniform"), so it
    picks the factory by lookup, never by pasting it into the code; shape and bound are rendered config."""
    init = args["init"].strip("'\"")
    tensor_args = f"{args['shape']}{''.join(', ' + e for e in extra)}"
    if init == "uniform":  # as torch.nn's RNNs and Linear initialise: U(-bound, bound)
        bound = args["bound"]
        low = f"-{bound}" if bound.replace(".", "").isalnum() else f"-({bound})"
        return f"nn.Parameter(torch.empty({tensor_args}).uniform_({low}, {bound}))"
    factory = {"zeros": "torch.zeros", "ones": "torch.ones"}[init]
    return f"nn.Parameter({factory}({tensor_args}))"


# A constructor keyword equal to PyTorch's default is left out, as a person would write it.
TORCH_LAYER: Mapping[str, Callable[..., str]] = {
    "Linear": _ctor("Linear", ("in_features", "out_features"), {"bias": "True"}),
    "Parameter": _parameter,
    "Conv2d": _ctor(
        "Conv2d", ("in_channels", "out_channels", "kernel_size"), {"stride": "1", "padding": "0", "bias": "True"}
    ),
    "Embedding": _ctor("Embedding", ("num_embeddings", "embedding_dim"), {}),
    "LayerNorm": _ctor("LayerNorm", ("normalized_shape",), {"eps": "1e-05"}),
    "RMSNorm": _ctor("RMSNorm", ("normalized_shape",), {"eps": "None"}),
    "SelfAttention": lambda args, extra=(): (
        _ctor("MultiheadAttention", ("embed_dim", "num_heads"), {"bias": "True"})(args, ("batch_first=True", *extra))
    ),
    "Dropout": _ctor("Dropout", ("p",), {}),
    "Conv1D": lambda args, extra=(): f"Conv1D({', '.join([args['out_features'], args['in_features'], *extra])})",
    "GroupNorm": _ctor("GroupNorm", ("num_groups", "num_channels"), {"eps": "1e-05", "affine": "True"}),
    "ConvTranspose2d": _ctor("ConvTranspose2d", ("in_channels", "out_channels", "kernel_size"),
                             {"stride": "1", "padding": "0", "output_padding": "0", "bias": "True"}),
    **{kind: _ctor(kind, ("num_features",), {"eps": "1e-05", "momentum": "0.1", "affine": "True",
                                             "track_running_stats": "True"}) for kind in ("BatchNorm1d", "BatchNorm2d")},
    "RotaryEmbedding": lambda args, extra=(): "RotaryEmbedding(" + ", ".join(
        [args["head_dim"], *_kwargs(args, {"theta": "10000.0"}), *extra]) + ")",
}

check_table("TORCH_EMIT", TORCH_EMIT)
check_table("TORCH_LAYER", TORCH_LAYER, ops=False)
