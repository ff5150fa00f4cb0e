"""The eager rest's tied embedding and head: how `compile(rest="eager")` keeps GPT-2's step short.

With `rest="eager"` the blocks are compiled and the embedding and head run eagerly. Where the two
hold one weight (GPT-2's `lm_head.weight is wte.weight`, 50,257 × 768), eager autograd builds that
weight's gradient from the head's dense matrix and the lookup's part, and a plain eager step pays
for two more matrices of that size than the gradient itself:

- a plain lookup fills a dense zero matrix with the rows it read. `SparseGradEmbedding` hands
  autograd the rows alone (a sparse gradient);
- autograd then adds the rows to a *copy* of the head's matrix. It adds a sparse gradient in place
  only into a dense one that arrives after it and that nothing else holds, and the head's matrix
  arrives first (the head's backward runs first) and is a view of the product it was computed as.
  So the lookup, just before it reads, makes an alias of the weight for the head. The autograd
  engine runs ready nodes in reverse order of creation, so the alias's node, made before the
  lookup, passes the head's gradient on after the lookup's rows have arrived; and the head
  (`FreshGradLinear`) computes that gradient as a matrix of its own. Autograd adds the rows into it.

On GPT-2 (12 layers, 2 × 64 tokens, 2-core CPU, blocks compiled by inductor), the sparse lookup
alone measured 1.055 and 1.063 of whole-model compile's step in two runs; with the alias and the
head's own matrix, 0.944 and 0.982 (benchmarks/compile_cold.py, docs/compile.md).

Nothing here changes what autograd computes or where it goes: both parts reach the weight through
autograd's own edges, so tensor hooks, DDP's hooks, `torch.autograd.grad` and `retain_graph` see
what they see without `compile`. Where the alias does not apply (no lookup before the head, no
grad, autocast, a traced forward, another weight in the head's slot), the head is a plain
`nn.Linear`; the worst a changed autograd engine could do is bring the copy back. The weight's
`.grad` stays dense (`_dense_grad`). Pickled or copied, both modules are plain torch ones again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SLOT = "_tiec_tied_slot"  # instance attribute shared by a tied lookup and its heads


class TiedSlot:
    """What a tied lookup leaves its heads in the current forward: the weight it read, and an
    alias of that weight made just before it read it."""

    __slots__ = ("alias", "weight")

    def __init__(self) -> None:
        self.weight: torch.Tensor | None = None
        self.alias: torch.Tensor | None = None


def _eager_grad() -> bool:
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


def _new(cls: type) -> nn.Module:
    """An empty `cls` for pickle and `copy` to fill with a module's state."""
    return cls.__new__(cls)


class _PlainWhenCopied:
    """Pickled, saved or copied, the torch class this one extends, without the tied slot: a copy
    does not carry the weight's hook, so it must not keep the sparse lookup either."""

    plain: type[nn.Module]

    def __reduce_ex__(self, protocol):
        _, _, state, *rest = super().__reduce_ex__(max(protocol, 2))
        return (_new, (self.plain,), {k: v for k, v in state.items() if k != SLOT}, *rest)


class SparseGradEmbedding(_PlainWhenCopied, nn.Embedding):
    """An `nn.Embedding` whose lookup hands autograd a sparse gradient, the rows it read, and,
    where `compile` gave it heads, leaves them an alias of its weight (see the module docstring)."""

    plain = nn.Embedding

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        slot = self.__dict__.get(SLOT)
        if slot is not None:
            armed = _eager_grad() and weight.requires_grad
            slot.weight, slot.alias = (weight, torch.ops.aten.alias(weight)) if armed else (None, None)
        return F.embedding(input, weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, sparse=True)


class _LinearFreshWeightGrad(torch.autograd.Function):
    """`F.linear` whose weight gradient is a matrix of its own, not a view of one."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias):
        return F.linear(input, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias = inputs
        ctx.save_for_backward(input, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_input = grad.matmul(weight) if ctx.needs_input_grad[0] else None
        grad_weight = rows.t().mm(input.reshape(-1, input.shape[-1])) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias


class FreshGradLinear(_PlainWhenCopied, nn.Linear):
    """An `nn.Linear` that reads its weight through the alias its tied lookup left it, and gives
    that alias a gradient of its own (see the module docstring); otherwise a plain `nn.Linear`."""

    plain = nn.Linear

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        slot = self.__dict__.get(SLOT)
        if (slot is None or slot.weight is not self.weight or not _eager_grad()
                or torch.is_autocast_enabled(input.device.type)):
            return F.linear(input, self.weight, self.bias)
        return _LinearFreshWeightGrad.apply(input, slot.alias, self.bias)


def _dense_grad(weight: torch.Tensor) -> None:
    """After accumulation: a gradient that only the sparse lookup gave is made dense, so that
    `.grad` has the layout it has without `compile` (optimizers such as AdamW refuse sparse ones)."""
    if weight.grad is not None and weight.grad.is_sparse:
        weight.grad = weight.grad.to_dense()


def tied_lookups(module: nn.Module, inside: set[int]) -> dict[nn.Embedding, list[nn.Linear]]:
    """The `nn.Embedding`s of `module`'s tree, not in `inside` (ids of modules compiled as blocks),
    whose weight requires grad and is also held by another module; each with the plain `nn.Linear`s
    outside `inside` that hold that weight as theirs (its heads)."""
    holders: dict[int, list[nn.Module]] = {}
    for sub in module.modules():
        for param in sub.parameters(recurse=False):
            holders.setdefault(id(param), []).append(sub)
    found = {}
    for sub in module.modules():
        if (type(sub) is nn.Embedding and not sub.sparse and id(sub) not in inside
                and sub.weight.requires_grad and len(holders[id(sub.weight)]) > 1):
            found[sub] = [h for h in holders[id(sub.weight)]
                          if type(h) is nn.Linear and id(h) not in inside and h.weight is sub.weight]
    return found


def tie_the_eager_rest(module: nn.Module, inside: set[int]) -> None:
    """Give each tied lookup of the eager rest a sparse gradient, and its heads the alias that
    lets autograd add the lookup's rows into the head's gradient in place (module docstring)."""
    for lookup, heads in tied_lookups(module, inside).items():
        lookup.__class__ = SparseGradEmbedding
        lookup.weight.register_post_accumulate_grad_hook(_dense_grad)
        if heads:
            slot = TiedSlot()
            for sub in (lookup, *heads):
                sub.__dict__[SLOT] = slot
            for head in heads:
                head.__class__ = FreshGradLinear
