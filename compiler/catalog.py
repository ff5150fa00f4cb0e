"""What the language knows by name: layer kinds and ops, their arguments and parameter slots.

One row per layer kind (`LAYERS`) and per op (`OP_SIGNATURES`). A row's arguments say how a call
binds: positional order, keyword names (the spec's short names, and PyTorch's where they differ),
defaults and the kind of value each takes. Shapes live in `shapes.SHAPE_RULES`, code in the
backends' tables; adding a layer or op adds one row to each.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

REQUIRED = object()


@dataclass(frozen=True)
class Arg:
    name: str  # the spec's name for it
    kind: str  # tensor | opt_tensor | operand (a tensor or a literal) | tensors | int | opt_int | ints (a list) |
    #            float | eps (a float ≥ 0) | bool | pair | str | dims | opt_pair | opt_float
    default: Any = REQUIRED
    key: str = ""  # config / attrs key; defaults to `name`
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    minimum: int = 0  # for pairs: kernel sizes and strides are at least 1

    @property
    def target(self) -> str:
        return self.key or self.name


@dataclass(frozen=True)
class BufferSlot:
    """A tensor a layer keeps beside its parameters that training does not update by gradient
    (BatchNorm's running statistics). `persistent`: in the state dict, as PyTorch's
    `register_buffer(..., persistent=)`; `dtype` "" is the layer's parameter dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    persistent: bool
    init: float  # every element's initial value, unless `rule` computes them
    rule: str = ""  # a rule of `buffers.BUFFER_RULES` computing its values from the layer's configuration


@dataclass(frozen=True)
class LayerSpec:
    args: tuple[Arg, ...]
    slots: Callable[[Mapping[str, Any]], list[tuple[str, tuple[int, ...]]]]  # config → (slot, shape)
    transposable: tuple[str, ...] = ()  # slots the layer can read as another parameter's transpose
    buffers: Callable[[Mapping[str, Any]], list[BufferSlot]] = lambda c: []  # config → buffer slots
    outputs: int = 1  # values one call gives: `c, s = rotary_emb(x)`, one IR node per value with its `index`


def _linear(c):
    out = [("weight", (c["out_features"], c["in_features"]))]
    return out + ([("bias", (c["out_features"],))] if c["bias"] else [])


def _conv2d(c):
    kh, kw = c["kernel_size"]
    out = [("weight", (c["out_channels"], c["in_channels"], kh, kw))]
    return out + ([("bias", (c["out_channels"],))] if c["bias"] else [])


def _conv_transpose2d(c):
    kh, kw = c["kernel_size"]
    out = [("weight", (c["in_channels"], c["out_channels"], kh, kw))]
    return out + ([("bias", (c["out_channels"],))] if c["bias"] else [])


def _attention(c):
    d = c["embed_dim"]
    out = [("in_proj_weight", (3 * d, d))] + ([("in_proj_bias", (3 * d,))] if c["bias"] else [])
    out += [("out_proj.weight", (d, d))] + ([("out_proj.bias", (d,))] if c["bias"] else [])
    return out


def _batch_norm_buffers(c):
    """torch.nn.BatchNorm1d/2d's buffers, by its names; none without `track_running_stats`."""
    if not c["track_running_stats"]:
        return []
    n = c["num_features"]
    return [BufferSlot("running_mean", (n,), "", True, 0.0), BufferSlot("running_var", (n,), "", True, 1.0),
            BufferSlot("num_batches_tracked", (), "i64", True, 0)]


def _rotary_buffers(c):
    """HF's LlamaRotaryEmbedding keeps θ^(−2i/head_dim) in f32 as `inv_freq`, outside the state dict."""
    return [BufferSlot("inv_freq", (c["head_dim"] // 2,), "f32", False, 0.0, rule="rotary_inv_freq")]


def _batch_norm(c):
    return [("weight", (c["num_features"],)), ("bias", (c["num_features"],))] if c["affine"] else []


PARAMETER_INITS = ("zeros", "ones", "uniform")  # a free parameter's initial value: every element, or U(-bound, bound)
# A layer's parameter dtype; "" is the program's default (f32 unless `--dtype` says otherwise).
FLOAT_DTYPES = ("f32", "f16", "bf16", "f64")
_DTYPE = Arg("dtype", "str", "", choices=("", *FLOAT_DTYPES))

LAYERS: dict[str, LayerSpec] = {
    "Linear": LayerSpec(
        (Arg("in", "int", key="in_features", aliases=("in_features",)),
         Arg("out", "int", key="out_features", aliases=("out_features",)),
         Arg("bias", "bool", True), _DTYPE),
        _linear, ("weight",)),  # y = x Wᵀ + b
    "Conv2d": LayerSpec(
        (Arg("in", "int", key="in_channels", aliases=("in_channels",)),
         Arg("out", "int", key="out_channels", aliases=("out_channels",)),
         Arg("kernel", "pair", key="kernel_size", aliases=("kernel_size",), minimum=1),
         Arg("stride", "pair", (1, 1), minimum=1), Arg("padding", "pair", (0, 0)), Arg("bias", "bool", True), _DTYPE),
        _conv2d),  # y = W ⋆ x + b
    "Embedding": LayerSpec(
        (Arg("num", "int", key="num_embeddings", aliases=("num_embeddings",)),
         Arg("dim", "int", key="embedding_dim", aliases=("embedding_dim",)), _DTYPE),
        lambda c: [("weight", (c["num_embeddings"], c["embedding_dim"]))], ("weight",)),  # y = W[i]
    "LayerNorm": LayerSpec(
        (Arg("d", "int", key="normalized_shape", aliases=("normalized_shape",)), Arg("eps", "eps", 1e-5), _DTYPE),
        lambda c: [("weight", (c["normalized_shape"],)), ("bias", (c["normalized_shape"],))]),
    "RMSNorm": LayerSpec(
        (Arg("d", "int", key="normalized_shape", aliases=("normalized_shape",)), Arg("eps", "eps", 1e-6), _DTYPE),
        lambda c: [("weight", (c["normalized_shape"],))]),
    "SelfAttention": LayerSpec(
        (Arg("d", "int", key="embed_dim", aliases=("embed_dim",)),
         Arg("heads", "int", key="num_heads", aliases=("num_heads",)),
         Arg("causal", "bool", False), Arg("bias", "bool", True), _DTYPE),
        _attention),
    "Dropout": LayerSpec((Arg("p", "float", 0.5),), lambda c: []),
    # A free parameter: one tensor that is its own state-dict key (slot ""), read as a value, never called
    "Parameter": LayerSpec(
        (Arg("shape", "ints", minimum=1), Arg("init", "str", "zeros", choices=PARAMETER_INITS), _DTYPE,
         Arg("bound", "eps", 0.0)),
        lambda c: [("", tuple(c["shape"]))]),
    "Conv1D": LayerSpec(  # HF GPT-2's layer: y = x W + b with W stored [in, out]; Conv1D(nf=out, nx=in)
        (Arg("nf", "int", key="out_features", aliases=("out", "out_features")),
         Arg("nx", "int", key="in_features", aliases=("in", "in_features")), _DTYPE),
        lambda c: [("weight", (c["in_features"], c["out_features"])), ("bias", (c["out_features"],))]),
    "GroupNorm": LayerSpec(
        (Arg("groups", "int", key="num_groups", aliases=("num_groups",)),
         Arg("channels", "int", key="num_channels", aliases=("num_channels",)), Arg("eps", "eps", 1e-5),
         Arg("affine", "bool", True), _DTYPE),
        lambda c: [("weight", (c["num_channels"],)), ("bias", (c["num_channels"],))] if c["affine"] else []),
    "ConvTranspose2d": LayerSpec(
        (Arg("in", "int", key="in_channels", aliases=("in_channels",)),
         Arg("out", "int", key="out_channels", aliases=("out_channels",)),
         Arg("kernel", "pair", key="kernel_size", aliases=("kernel_size",), minimum=1),
         Arg("stride", "pair", (1, 1), minimum=1), Arg("padding", "pair", (0, 0)),
         Arg("output_padding", "pair", (0, 0)), Arg("bias", "bool", True), _DTYPE),
        _conv_transpose2d),  # the adjoint of Conv2d(out → in): its weight has Conv2d's shape
    **{kind: LayerSpec(  # (x - mean) / √(var + eps) · w + b per channel: batch statistics in training
        (Arg("num_features", "int", aliases=("features",)), Arg("eps", "eps", 1e-5), Arg("momentum", "float", 0.1),
         Arg("affine", "bool", True), Arg("track_running_stats", "bool", True), _DTYPE),
        _batch_norm, buffers=_batch_norm_buffers) for kind in ("BatchNorm1d", "BatchNorm2d")},
    # cos and sin of t · inv_freq for the positions t of the input's dim −2, as HF's LlamaRotaryEmbedding
    "RotaryEmbedding": LayerSpec(
        (Arg("head_dim", "int", aliases=("dim",)), Arg("theta", "float", 10000.0, aliases=("base", "rope_theta"))),
        lambda c: [], buffers=_rotary_buffers, outputs=2),
}

_X = Arg("x", "tensor")
_UNARY = (_X,)
_AB = (Arg("a", "tensor", aliases=("input",)), Arg("b", "tensor", aliases=("other",)))
# An operand is a tensor or a number literal (`gt(x, 0)`, `where(m, x, 0.0)`): the literal takes
# the tensor's dtype, as in PyTorch.
_AB_OPERANDS = (Arg("a", "operand", aliases=("input",)), Arg("b", "operand", aliases=("other",)))
TENSOR_DTYPES = ("f32", "f16", "bf16", "f64", "i32", "i64", "bool")

OP_SIGNATURES: dict[str, tuple[Arg, ...]] = {
    "relu": _UNARY,
    "tanh": _UNARY,
    "sigmoid": _UNARY,
    "silu": _UNARY,
    "gelu": (_X, Arg("approximate", "str", "none", choices=("none", "tanh"))),
    "softmax": (_X, Arg("dim", "int")),
    "log_softmax": (_X, Arg("dim", "int")),
    "flatten": (_X, Arg("start_dim", "int", 1), Arg("end_dim", "int", -1)),
    "reshape": (_X, Arg("shape", "dims")),
    "transpose": (_X, Arg("dim0", "int"), Arg("dim1", "int")),
    "max_pool2d": (_X, Arg("kernel", "pair", aliases=("kernel_size",), minimum=1), Arg("stride", "opt_pair", None, minimum=1),
                   Arg("padding", "pair", (0, 0))),
    "avg_pool2d": (_X, Arg("kernel", "pair", aliases=("kernel_size",), minimum=1), Arg("stride", "opt_pair", None, minimum=1),
                   Arg("padding", "pair", (0, 0))),
    "mean": (_X, Arg("dim", "int"), Arg("keepdim", "bool", False)),
    "concat": (Arg("tensors", "tensors"), Arg("dim", "int", 0)),
    "cosine_similarity": (Arg("x1", "tensor", aliases=("a",)), Arg("x2", "tensor", aliases=("b",)),
                          Arg("dim", "int", 1), Arg("eps", "eps", 1e-8)),
    "positions": _UNARY,
    "adaptive_avg_pool2d": (_X, Arg("output_size", "pair", aliases=("size",), minimum=1)),
    # elementwise math, comparisons, selection and casts (rules: shapes_math.py)
    **{op: _UNARY for op in ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "erf", "abs")},
    "pow": (_X, Arg("exponent", "operand")),
    "minimum": _AB, "maximum": _AB,
    "clamp": (_X, Arg("min", "opt_float", None), Arg("max", "opt_float", None)),
    **{op: _AB_OPERANDS for op in ("eq", "ne", "lt", "le", "gt", "ge")},
    "logical_and": _AB, "logical_or": _AB, "logical_not": _UNARY,
    "where": (Arg("condition", "tensor"), Arg("a", "operand", aliases=("input",)),
              Arg("b", "operand", aliases=("other",))),
    "masked_fill": (_X, Arg("mask", "tensor"), Arg("value", "float")),
    "cast": (_X, Arg("dtype", "str", choices=TENSOR_DTYPES)),
    "cast_like": (_X, Arg("other", "tensor")),
    # slicing and indexing (rules: shapes_index.py)
    "slice": (_X, Arg("dim", "int"), Arg("start", "int", 0), Arg("end", "opt_int", None), Arg("step", "int", 1)),
    "select": (_X, Arg("dim", "int"), Arg("index", "int")),
    "unsqueeze": (_X, Arg("dim", "int")),
    "squeeze": (_X, Arg("dim", "int")),
    "gather": (_X, Arg("dim", "int"), Arg("index", "tensor")),
    "index_select": (_X, Arg("dim", "int"), Arg("index", "tensor")),
    # softmax(q kᵀ · scale [+ mask]) v, PyTorch's F.scaled_dot_product_attention (rules: shapes_attention.py)
    "sdpa": (Arg("q", "tensor", aliases=("query",)), Arg("k", "tensor", aliases=("key",)),
             Arg("v", "tensor", aliases=("value",)), Arg("mask", "opt_tensor", None, aliases=("attn_mask",)),
             Arg("causal", "bool", False, aliases=("is_causal",)), Arg("scale", "opt_float", None)),
}

# Ops called for several values, one IR node per piece, which carries its `index` among them:
# `q, k, v = chunk(qkv, 3, dim=-1)`.
PIECE_OPS: dict[str, tuple[Arg, ...]] = {
    "chunk": (_X, Arg("chunks", "int"), Arg("dim", "int", 0)),
    "split": (_X, Arg("sizes", "ints", minimum=1), Arg("dim", "int", 0)),
}

# Names a layer, block instance or (in a program of several models) a model cannot take: every
# PyTorch module already has an attribute by that name, so it could not hold a submodule so named.
RESERVED_MEMBERS = frozenset({
    "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "compile", "cpu",
    "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward", "get_buffer", "get_extra_state",
    "get_parameter", "get_submodule", "half", "ipu", "load_state_dict", "modules", "mtia", "named_buffers",
    "named_children", "named_modules", "named_parameters", "parameters", "register_backward_hook", "register_buffer",
    "register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
    "register_full_backward_pre_hook", "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
    "register_module", "register_parameter", "register_state_dict_post_hook", "register_state_dict_pre_hook",
    "requires_grad_", "set_extra_state", "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train",
    "training", "type", "xpu", "zero_grad", "tie_penalty",
    "tie_strengths", "set_tie_strength", "load_anchors",  # the tie methods every emitted model has
    "retie",  # every emitted model's: re-aliases its share groups (`backends/torch/retie.py`)
})


def reserved_member(name: str) -> bool:
    """A PyTorch module attribute (see `RESERVED_MEMBERS`), or any name beginning with an underscore
    that a module keeps for itself (`_parameters`, `__dict__`, …)."""
    return name in RESERVED_MEMBERS or (name.startswith("_") and (name.startswith("__") or name in _PRIVATE_MEMBERS))


_PRIVATE_MEMBERS = frozenset({
    "_apply", "_backward_hooks", "_backward_pre_hooks", "_buffers", "_call_impl", "_compiled_call_impl",
    "_forward_hooks", "_forward_hooks_always_called", "_forward_hooks_with_kwargs", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_get_backward_hooks", "_get_backward_pre_hooks", "_get_name",
    "_is_full_backward_hook", "_load_from_state_dict", "_load_state_dict_post_hooks", "_load_state_dict_pre_hooks",
    "_maybe_warn_non_full_backward_hook", "_modules", "_named_members", "_non_persistent_buffers_set", "_parameters",
    "_register_load_state_dict_pre_hook", "_register_state_dict_hook", "_replicate_for_data_parallel",
    "_save_to_state_dict", "_slow_forward", "_state_dict_hooks", "_state_dict_pre_hooks", "_version",
    "_wrapped_call_impl",
})

# Python-operator ops built from expression syntax rather than calls.
BINARY_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul"}

# Every function op of the IR and the attributes its nodes carry: the ops called by name above,
# the operators, and the nodes expressions make on their own (a parameter read, a literal).
# The IR's closed op set and every backend's table are checked against this one registry.
FUNCTION_OPS: dict[str, tuple[str, ...]] = {
    "param": ("param", "transposed"),
    "const": ("value",),
    **{op: () for op in BINARY_OPS.values()},
    "neg": (),
    **{op: tuple(a.target for a in sig if a.kind not in ("tensor", "opt_tensor", "operand", "tensors"))
       for op, sig in OP_SIGNATURES.items()},
    **{op: (*(a.target for a in sig if a.kind != "tensor"), "index") for op, sig in PIECE_OPS.items()},
}


def check_table(name: str, table, layers: bool = True, ops: bool = True) -> None:
    """A backend's per-op table must have exactly one row per op (and per layer kind): raised at
    import, so a new op cannot ship with a backend that does not know it."""
    want = (set(FUNCTION_OPS) if ops else set()) | (set(LAYERS) if layers else set())
    missing, extra = sorted(want - set(table)), sorted(set(table) - want)
    if missing or extra:
        raise AssertionError(f"{name}: rows missing for {missing}, rows for unknown ops {extra}")
