"""The documented limits (docs/language.md §13), checked where the spec passes them, before anything
is allocated: a size or count must fit in int64, and one model may hold at most `MAX_LAYERS`
layers once every non-shared repeat is unrolled, and declare at most `MAX_PARAMS` parameters."""
from __future__ import annotations

from typing import Any

from tiec.dsl.diagnostics import Span, TieError

MAX_BLOCK_NESTING = 32  # block instances inside block instances
MAX_SIZE = 2**63 - 1  # a size, dimension or repeat count: what int64 holds
MAX_LAYERS = 200_000  # layers of one model once every non-shared repeat is unrolled
MAX_PARAMS = 10**10  # parameters one model declares (before sharing): 40 GB in f32
MAX_PIECES = 4096  # values one chunk/split call gives
F32_NORMAL, F32_MAX = 2.0**-126, (2 - 2.0**-23) * 2.0**127  # the smallest normal and the largest f32
MAX_ROTARY_DIM = 65_536  # a RotaryEmbedding's head_dim: its inv_freq is computed when the module is built

_SIZES = ("in_features", "out_features", "in_channels", "out_channels", "num_embeddings", "embedding_dim",
          "num_groups", "num_channels",
          "normalized_shape", "embed_dim", "num_heads", "num_features", "head_dim")


def big(n: int) -> str:
    return f"{n:,}" if abs(n) < 10**24 else f"{n:.3e}"


def check_layer(kind: str, values: dict[str, Any], span: Span) -> None:
    """A layer's configuration: sizes positive and within int64, heads dividing the width, p < 1."""
    for key, v in values.items():
        for x in v if isinstance(v, tuple) else (v,):
            if isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_SIZE:
                raise TieError(f"{kind} '{key}' = {big(x)} does not fit in int64", span,
                               hint="docs/language.md lists the limits")
    for key in _SIZES:
        if key in values and values[key] <= 0:
            raise TieError(f"{kind} size '{key}' must be positive, got {values[key]}", span)
    if kind == "SelfAttention" and values["embed_dim"] % values["num_heads"]:
        raise TieError(f"SelfAttention: d={values['embed_dim']} is not divisible by heads={values['num_heads']}", span)
    if kind == "GroupNorm" and values["num_channels"] % values["num_groups"]:
        raise TieError(f"GroupNorm: {values['num_channels']} channels do not split into {values['num_groups']} groups",
                       span)
    if kind == "ConvTranspose2d" and any(o >= max(s, 1) for o, s in zip(values["output_padding"], values["stride"])):
        raise TieError(f"ConvTranspose2d: output_padding {values['output_padding']} must be below the stride "
                       f"{values['stride']}", span)
    if kind.startswith("BatchNorm") and not 0 <= values["momentum"] <= 1:
        raise TieError(f"{kind} momentum must be in [0, 1], got {values['momentum']}", span)
    if kind == "Parameter" and (values["init"] == "uniform") != (values["bound"] > 0):
        raise TieError("a Parameter with init=\"uniform\" takes a bound > 0 (every element from U(-bound, bound)), "
                       "and only such a one takes a bound", span, hint='e.g. init="uniform", bound=0.125')
    if kind == "RotaryEmbedding":
        _check_rotary(values, span)
    if kind == "Dropout" and not 0 <= values["p"] < 1:
        raise TieError(f"Dropout probability must be in [0, 1), got {values['p']}", span)


def _check_rotary(values: dict[str, Any], span: Span) -> None:
    """head_dim even (cos and sin pair dim i with dim i + head_dim/2) and at most MAX_ROTARY_DIM; θ > 0
    and a normal f32 number."""
    d, theta = values["head_dim"], values["theta"]
    if d % 2:
        raise TieError(f"RotaryEmbedding head_dim must be even, got {d}", span,
                       hint="rotary embeddings rotate pairs of dims: head_dim is d // heads")
    if d > MAX_ROTARY_DIM:
        raise TieError(f"RotaryEmbedding head_dim {big(d)} is above the limit of {MAX_ROTARY_DIM:,}", span,
                       hint="docs/language.md lists the limits")
    if theta <= 0:
        raise TieError(f"RotaryEmbedding theta must be positive, got {theta}", span,
                       hint="theta is the base of the frequencies θ^(−2i/head_dim): 10000.0 in Llama 2, 500000.0 in Llama 3")
    if not F32_NORMAL <= theta <= F32_MAX:  # inv_freq is computed in f32: θ must be an f32 number, or it is 0 or inf
        raise TieError(f"RotaryEmbedding theta {theta:g} is outside the range of f32 ({F32_NORMAL:.3g} to {F32_MAX:.3g})",
                       span, hint="its frequencies are computed in f32, as HF computes them")


class Totals:
    """Layers and parameters of one definition, every non-shared repeat unrolled."""

    def __init__(self) -> None:
        self.layers = 0
        self.params = 0

    def add(self, layers: int, params: int, span: Span, repeats: list[int]) -> None:
        self.layers += layers
        self.params += params
        hint = f"inside {' × '.join(f'repeat {n}' for n in repeats)}: copies count too; " if repeats else ""
        if self.layers > MAX_LAYERS:
            raise TieError(f"this makes {self.layers:,} layers once repeats are unrolled; the limit is {MAX_LAYERS:,}",
                           span, hint=hint + "`repeat … share` makes one layer for every iteration")
        if self.params > MAX_PARAMS:
            raise TieError(f"this makes {big(self.params)} parameters; the limit is {MAX_PARAMS:,}", span,
                           hint=hint + "docs/language.md lists the limits")
