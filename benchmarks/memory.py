"""Parameter memory: bytes the compiled module really holds / unique parameter bytes from stats.

The module's bytes are the sum over distinct parameter storages (deduplicated by
`untyped_storage().data_ptr()`, each counted at its storage's full size, so a parameter that is a
view of a larger buffer is billed the whole buffer). The figure must be exactly 1: every share
group one tensor, nothing allocated that stats does not count. For scale, the bytes a
state-dict walk would count (aliases counted again) are reported next to it.
"""
from __future__ import annotations

from pathlib import Path

import tiec
import torch

from common import Figure
from references import EXAMPLES


def unique_storage_bytes(module: torch.nn.Module) -> tuple[int, int]:
    """(bytes of distinct parameter storages, number of distinct storages)."""
    seen: dict[int, int] = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        storage = p.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()), len(seen)


def state_dict_bytes(module: torch.nn.Module) -> int:
    """What summing `numel × element size` over the state dict gives (an alias counts again)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def measure(path: Path, overrides: dict | None) -> tuple[list[Figure], dict]:
    """One figure for the whole program's module, and one per model when the file has several."""
    program = tiec.load(path, overrides)
    stats = program.stats()
    targets = [(None, stats["program"]["unique_bytes"])]
    if len(program.models) > 1:
        targets += [(m, stats["models"][m]["unique_bytes"]) for m in program.models]
    figures, details = [], {}
    for model, want in targets:
        module = program.torch(model)
        got, tensors = unique_storage_bytes(module)
        naive = state_dict_bytes(module)
        label = f"{path.stem}" + (f".{model}" if model else "") + (f" ({overrides})" if overrides else "")
        figures.append(Figure(f"{label}", got / want, 1.0, "==", "stats unique_bytes",
                              note=f"{got:,d} B in {tensors} tensors; state dict counts {naive / want:.3f}x",
                              details={"module_bytes": got, "stats_unique_bytes": want, "tensors": tensors,
                                       "state_dict_bytes": naive, "equal": got == want}))
        details[label] = figures[-1].details
        del module
    return figures, details


def run(quick: bool = False, examples: Path = EXAMPLES) -> tuple[list[Figure], dict]:
    """Every example; gpt2_small with layers=2 under `quick` (its full size allocates ~0.5 GB)."""
    figures, details = [], {}
    for path in sorted(examples.glob("*.tie")):
        overrides = {"layers": 2} if quick and path.stem == "gpt2_small" else None
        figs, d = measure(path, overrides)
        figures += figs
        details.update(d)
    return figures, {"settings": {"quick": quick}, "programs": details}
