"""`tiec.compile(module)`: `torch.compile` a module so that each repeated block is compiled once.

A transformer is mostly one block class used N times (`nn.ModuleList` + `for block in self.h:`,
or one shared instance called in a loop). `torch.compile(model)` inlines every call, so dynamo,
AOT autograd and inductor each redo the block's work N times and cold start grows with depth.
This module finds the block classes of any `nn.Module` tree and offers two recipes:

- `rest="eager"` (the default): each block instance is compiled in place (`block.compile()`).
  Instances of one class share one graph without recompiling (dynamo passes a module's parameters
  as graph inputs, so the guards that pass for one instance pass for the others), and the rest
  runs eagerly. The cheapest cold start. An eager embedding whose weight another module also reads
  (GPT-2's `lm_head.weight is wte.weight`) becomes a `SparseGradEmbedding`, and an eager
  `nn.Linear` head holding it a `FreshGradLinear`: autograd then adds the rows the lookup read
  into the head's weight gradient in place, where plain modules would fill a dense matrix at
  every step and add it to a copy of the head's (tiec/tied_rest.py). `.grad` stays dense.
- `rest="compiled"`: each block class's `forward` becomes a `torch.compiler.nested_compile_region`
  and the whole module is compiled in place (`module.compile()`). Dynamo traces the block once and
  stamps the graph out for the other calls, inductor generates the block's kernels once, and the
  embeddings and head stay in one graph with the blocks' calls. For a rest with much work of its
  own to fuse; its cold start pays torch's work per call of a region.

The default is the recipe that starts soonest, at the step time of whole-model compile. On GPT-2
its cold start took 0.38 of whole-model compile's, and its step 0.94 and 0.98 of that compile's in
two processes.
benchmarks/compile_cold.py measures both recipes against whole-model compile of a hand-written
GPT-2, each in a fresh process with fresh caches.

With inductor, the regions recipe turns off inductor's wrapper-level buffer reuse
(`allow_buffer_reuse`, for this compile only; a caller's `options=` wins). In torch 2.13 on CPU,
inductor reused the buffer holding a region's input once the region's last call had read it,
although the region had returned that input as a tensor saved for backward: with an embedding,
two GPT-2 blocks, a LayerNorm and a head, gradients came out wrong, some by half their size,
while the loss was right.

With inductor on a CPU model, `compile` also starts inductor's one-time probe of the CPU's vector
instruction sets in the background (`probe_cpu_in_background`); see there.

A *block class* is a user-defined module class (not one of `torch`'s) with its own `forward`,
other than the root's class, that

- has two or more instances in the tree, is a child of an `nn.ModuleList`, `nn.ModuleDict` or
  `nn.Sequential`, carries `__tiec_block__ = True`, or is named in `blocks=`; or
- has one instance that contains no such class (it may be a shared repeat, one instance called
  in a loop; a region called only once is inlined again by dynamo).

Only the outermost block classes count: a block's sublayers are compiled as part of it, and a
wrapper holding repeated blocks (an `Encoder` with a `ModuleList`) is compiled through.

Everything happens in place: the same module comes back, with the same state-dict keys, the same
parameter objects (shared parameters stay shared), and it pickles and deep-copies as before
(uncompiled: the tied lookup and head as a plain `nn.Embedding` and `nn.Linear`). With
`rest="compiled"` each block class's `forward` is wrapped on the class (a no-op outside
`torch.compile`), so other instances of those classes also compile as regions.

`import tiec.compile` makes the module callable: `tiec.compile(model)` is `compile(model)`.
"""
from __future__ import annotations

import os
import platform
import sys
import threading
import types
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from tiec.tied_rest import FreshGradLinear, SparseGradEmbedding, tie_the_eager_rest

__all__ = ["FreshGradLinear", "SparseGradEmbedding", "block_classes", "compile", "probe_cpu_in_background",
           "summary"]

MARKER = "__tiec_block__"
CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
_REGION = "__marked_compile_region_fn__"  # set by torch on a nested_compile_region wrapper
_MIN_REUSE_ENTRIES = 64  # torch's default of 8 raises once a class has more than 8 configurations
# Wrong gradients otherwise (see the module docstring); the benchmark checks them on every run.
NO_BUFFER_REUSE = {"allow_buffer_reuse": False}


def _own_forward(cls: type) -> bool:
    return cls.forward is not nn.Module.forward and not cls.__module__.startswith("torch.")


def block_classes(module: nn.Module, blocks: Iterable[type | str] = ()) -> dict[type, list[nn.Module]]:
    """The outermost block classes in `module`'s tree (see the module docstring), each with its
    instances in `named_modules()` order.

    Args:
        module: the root; its own class is never a block.
        blocks: classes (or class names) to treat as blocks even when they occur once.

    Returns:
        block class → its instances, in the order of their first occurrence.
    """
    named = {b if isinstance(b, str) else b.__qualname__ for b in blocks}
    instances: dict[type, list[nn.Module]] = {}
    in_container: set[type] = set()
    for parent in module.modules():
        for child in parent.children():
            if isinstance(parent, CONTAINERS):
                in_container.add(type(child))
    for sub in module.modules():  # each instance once, however many parents hold it
        if sub is not module and _own_forward(type(sub)):
            instances.setdefault(type(sub), []).append(sub)
    repeated = {cls for cls, subs in instances.items()
                if len(subs) >= 2 or cls in in_container or getattr(cls, MARKER, False) or cls.__qualname__ in named}

    def holds_repeated(sub: nn.Module) -> bool:
        return any(type(inner) in repeated for inner in sub.modules() if inner is not sub)

    candidates = {cls for cls, subs in instances.items()
                  if cls in repeated or not any(holds_repeated(s) for s in subs)}
    chosen: dict[type, list[nn.Module]] = {}
    _outermost(module, candidates, chosen, set())
    return chosen


def _outermost(sub: nn.Module, candidates: set[type], chosen: dict[type, list[nn.Module]], seen: set[int]) -> None:
    """Collect the instances of `candidates` not inside another candidate's instance."""
    for child in sub.children():
        if id(child) in seen:
            continue
        seen.add(id(child))
        if type(child) in candidates:
            chosen.setdefault(type(child), []).append(child)
        else:
            _outermost(child, candidates, chosen, seen)


def _mark_region(cls: type, instances: int) -> None:
    """Make `cls.forward` (its own or inherited) a nested compile region, unless it is one already."""
    if not hasattr(cls.forward, _REGION):
        cls.forward = torch.compiler.nested_compile_region(
            cls.forward, max_reuse_entries=max(_MIN_REUSE_ENTRIES, instances))


def _probe_from_the_end(sets: list) -> None:
    """Check instruction sets, taking each from the end of `sets` (shared by the probe threads)."""
    while True:
        with _probe_lock:
            if not sets:
                return
            isa = sets.pop()
        try:
            bool(isa)  # inductor's own check, cached per instruction set
        except Exception:  # noqa: BLE001, S110 - inductor asks again on its own thread and reports it there
            pass


def _cores() -> int:
    """The cores this process may run on (a container's or `taskset`'s share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_probe_lock = threading.Lock()
_probe_threads: list[threading.Thread] = []


def probe_cpu_in_background() -> list[threading.Thread]:
    """Start inductor's one-time probe of the CPU's vector instruction sets on background threads.

    Inductor's first CPU kernel asks which vector instruction sets work (`valid_vec_isa_list`).
    For each set the CPU reports (four on a recent x86: AMX, AVX512-VNNI, AVX512, AVX2) it compiles
    small C++ files against ATen's vector headers and loads them in a fresh process, one set after
    the other, in the middle of the first compile. With an empty cache that took 17 s on a 2-core
    machine, a third of GPT-2's whole-model cold start, paid by any model.

    Here the sets are checked from the moment `compile` is called, while dynamo and AOT autograd
    trace; the threads wait on the C++ compiler, not on the interpreter. There is one thread per
    core but one (at most one per set), so the trace keeps a core of its own. The threads take the
    sets from the end of inductor's list, and inductor, when it asks, goes through the list from
    the front: whatever is left when it asks is checked from both ends at once.

    The threads call exactly what inductor calls (`bool(isa)`, cached per set), so the answer is
    inductor's own. If inductor reaches a set a thread is building, the file lock it takes per set
    makes it wait for that build instead of starting another. Started once per process; a no-op off
    x86, with `cpp.vec_isa_ok` set, once inductor has its answer, or where this torch lays the
    probe out differently (inductor then probes as usual).

    Returns:
        the threads started by this call (empty when there was nothing to start).
    """
    if platform.machine() not in ("x86_64", "AMD64") or sys.platform not in ("linux", "win32"):
        return []
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor import cpu_vec_isa
        if inductor_config.cpp.vec_isa_ok is not None or cpu_vec_isa.valid_vec_isa_list.cache_info().currsize:
            return []
        flags = cpu_vec_isa.x86_isa_checker()
        sets = [isa for isa in cpu_vec_isa.supported_vec_isa_list if all(f in flags for f in str(isa).split())]
    except (ImportError, AttributeError):
        return []
    with _probe_lock:
        if _probe_threads or not sets:
            return []
        count = max(1, min(len(sets), _cores() - 1))
        _probe_threads.extend(threading.Thread(target=_probe_from_the_end, args=(sets,), daemon=True,
                                               name=f"tiec-isa-probe-{i}") for i in range(count))
        for thread in _probe_threads:
            thread.start()
        return list(_probe_threads)


def _runs_on_cpu(module: nn.Module) -> bool:
    tensors = [*module.parameters(), *module.buffers()]
    return not tensors or any(t.device.type == "cpu" for t in tensors)


def compile(module: nn.Module, *, rest: Literal["eager", "compiled"] = "eager",
            blocks: Iterable[type | str] = (), **torch_compile_kwargs) -> nn.Module:
    """Compile `module` in place so that each block class is traced and code-generated once.

    Args:
        module: any `nn.Module` (a tiec module or a hand-written one).
        rest: "eager": only the blocks are compiled, one graph per class, and the rest runs
            eagerly, a tied embedding and head adding their gradients in place (cheapest
            cold start);
            "compiled": block classes become nested compile regions and the whole module is
            compiled. With no block classes in the tree, both compile the whole module.
        blocks: classes or class names to treat as blocks although they occur once.
        **torch_compile_kwargs: passed to `torch.compile` (`backend=`, `mode=`, `dynamic=`, ...).

    Returns:
        `module` itself, compiled in place (same state-dict keys, same parameter objects).

    Raises:
        ValueError: `rest` is neither "compiled" nor "eager".
    """
    if rest not in ("compiled", "eager"):
        raise ValueError(f"rest must be 'eager' or 'compiled', not {rest!r}")
    inductor = torch_compile_kwargs.get("backend", "inductor") == "inductor"
    if inductor and _runs_on_cpu(module):
        probe_cpu_in_background()
    found = block_classes(module, blocks)
    if rest == "eager" and found:
        for subs in found.values():
            for sub in subs:
                sub.compile(**torch_compile_kwargs)
        in_blocks = {id(inner) for subs in found.values() for sub in subs for inner in sub.modules()}
        tie_the_eager_rest(module, in_blocks)
        return module
    for cls, subs in found.items():
        _mark_region(cls, len(subs))
    if found and inductor:
        options = {**NO_BUFFER_REUSE, **torch_compile_kwargs.get("options", {})}
        torch_compile_kwargs = {**torch_compile_kwargs, "options": options}
    module.compile(**torch_compile_kwargs)
    return module


def summary(module: nn.Module, blocks: Iterable[type | str] = ()) -> str:
    """One line per block class that `compile` would find: its name and instance count."""
    found = block_classes(module, blocks)
    return "\n".join(f"{cls.__qualname__}: {len(subs)} instance(s)" for cls, subs in found.items()) or "no blocks"


class _CallableModule(types.ModuleType):
    """This module, callable: `tiec.compile(model, ...)` once `tiec.compile` is imported."""

    def __call__(self, module: nn.Module, **kwargs) -> nn.Module:
        return compile(module, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
