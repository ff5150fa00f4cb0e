"""Running a compiled model in both backends, for the fuzz worker's "examine" checks.

Inputs get the declared dtypes and shapes, each symbolic dim (`B`, `T`) the value 2; floats are
random, integers 0 (an index every embedding has), bools random. When the inputs are concrete,
torch must run the model; with symbols it may fail with one of the errors torch raises for sizes
that do not fit (a symbol may stand for a size it must equal elsewhere), and the run then proves
nothing; any other exception (a NameError, say) is a bad outcome. When torch runs, its outputs must have the checker's
dtypes and shapes (symbolic dims evaluated with the values given), and onnxruntime must run the
exported file and give the same values (rtol 1e-3 / atol 1e-5; for f16 1e-2 / 1e-3; integers and
bools exactly). bf16 goes no further than torch: numpy, and so onnxruntime's Python API, has none.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from .worker import Outcome

TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64,
                "i32": torch.int32, "i64": torch.int64, "bool": torch.bool}
SYMBOL = 2
MAX_VALUES = 2**20
SIZE_ERRORS = (RuntimeError, AssertionError, ValueError, IndexError)  # what torch raises for sizes (and attention)


def options() -> ort.SessionOptions:
    o = ort.SessionOptions()
    o.intra_op_num_threads = o.inter_op_num_threads = 1
    return o


def outputs(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _sample(dtype: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if dtype == "bool":
        return torch.rand(shape, generator=gen) > 0.5
    if dtype in ("i32", "i64"):
        return torch.zeros(shape, dtype=TORCH_DTYPES[dtype])
    return torch.randn(shape, generator=gen).to(TORCH_DTYPES[dtype])


def _size(dim, symbols: dict[str, int]) -> int | None:
    """A checker dim (an int, a symbol or an expression such as `(H+2-3)//1+1`) at these values."""
    if isinstance(dim, int):
        return dim
    try:
        return int(eval(dim, {"__builtins__": {}}, symbols))
    except Exception:  # noqa: BLE001 - a symbol the inputs do not name
        return None


def run_model(program, model: str, module, onnx_path: str) -> Outcome | bool:
    """A bad `Outcome`, or whether both backends ran `model` (False: skipped or inconclusive)."""
    graph, types = program.ir.models[model], program.ir.types[model]
    symbols = {d: SYMBOL for i in graph.inputs for d in i.type.shape if isinstance(d, str)}
    shapes = [tuple(symbols.get(d, d) for d in i.type.shape) for i in graph.inputs]
    if sum(int(np.prod(s)) for s in shapes) > MAX_VALUES:
        return False
    gen = torch.Generator().manual_seed(0)
    xs = [_sample(i.type.dtype, s, gen) for i, s in zip(graph.inputs, shapes)]
    try:
        with torch.no_grad():
            got = outputs(module(*xs))
    except Exception as e:  # noqa: BLE001 - the checker accepted this program
        if symbols and type(e) in SIZE_ERRORS:  # the sizes given to the symbols do not fit
            return False
        return Outcome("bad", "torch-run", f"model {model} (symbols {symbols}): {type(e).__name__}: {e}")
    for out, value in zip(graph.outputs, got):
        want = types[out.value]
        sizes = [_size(d, symbols) for d in want.shape]
        if value.dtype != TORCH_DTYPES[want.dtype] or len(sizes) != value.dim() or any(
                n is not None and n != m for n, m in zip(sizes, value.shape)):
            return Outcome("bad", "types", f"model {model}, output {out.name}: the checker says {want}, torch gives "
                                           f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)} "
                                           f"(symbols {symbols})")
    if any(x.dtype == torch.bfloat16 for x in (*xs, *got)):
        return False
    try:
        session = ort.InferenceSession(onnx_path, options(), providers=["CPUExecutionProvider"])
        results = session.run(None, {i.name: x.numpy() for i, x in zip(graph.inputs, xs)})
    except Exception as e:  # noqa: BLE001 - onnxruntime's error types are not public
        return Outcome("bad", "onnxruntime-run", f"model {model} (symbols {symbols}): {str(e)[:600]}")
    for out, result, value in zip(graph.outputs, results, got):
        want = value.detach().numpy()  # a returned parameter is itself, grad and all
        tol = {"rtol": 1e-2, "atol": 1e-3} if want.dtype == np.float16 else {"rtol": 1e-3, "atol": 1e-5}
        same = result.dtype == want.dtype and result.shape == want.shape and (
            np.allclose(result, want, equal_nan=True, **tol) if want.dtype.kind == "f" else np.array_equal(result, want))
        if not same:
            return Outcome("bad", "onnxruntime-differs", f"model {model}, output {out.name} (symbols {symbols}): "
                                                         f"onnxruntime {result.dtype}{list(result.shape)} "
                                                         f"{result!r:.300}, torch {want!r:.300}")
    return True
