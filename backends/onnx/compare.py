"""Whether two ONNX models compute the same thing, by onnxruntime on random inputs (`tiec dedup`'s
check that a rewrite changed no output)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

MAX_INPUT_ELEMENTS = 2**26  # random input values drawn for one check (256 MiB of float32)


def same_outputs(before: bytes, after: bytes, seed: int, error, dims: dict[str, int] | None = None) -> float:
    """Run both models in onnxruntime on one set of random inputs; the largest |difference| of
    their outputs. Raises `error(why)` when they differ (rtol 1e-3, atol 1e-5) or cannot run.
    Integer inputs are drawn from [0, n), n the smallest first dim of a tensor a Gather indexes
    with them (else 2), so token ids stay in range; a symbolic dim is `dims[its name]`, else 2."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # its failures are reported below, not logged in colour
    try:
        runs = [ort.InferenceSession(m, options, providers=["CPUExecutionProvider"]) for m in (before, after)]
    except Exception as e:  # noqa: BLE001 - a runtime that cannot load the file cannot vouch for it
        raise error(f"onnxruntime cannot load it, so the merge cannot be verified: {e}") from None
    model = onnx.load_from_string(before)
    feeds = _random_inputs(model, seed, error, dims or {})
    try:
        got = [r.run(None, feeds) for r in runs]
    except Exception as e:  # noqa: BLE001
        symbolic = sorted({d.dim_param for v in model.graph.input for d in v.type.tensor_type.shape.dim
                           if d.dim_param and d.dim_param not in (dims or {})})
        hint = (f"if the graph fixes a size its inputs leave symbolic, give it: --dim {symbolic[0]}=N"
                if symbolic else None)
        raise error(f"onnxruntime cannot run it on random inputs, so the merge cannot be verified: {e}",
                    hint) from None
    worst = 0.0
    for out, a, b in zip(runs[0].get_outputs(), *got):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise error(f"output '{out.name}' changed: {a.dtype}{list(a.shape)} became {b.dtype}{list(b.shape)}")
        if a.dtype.kind in "fc":
            if not np.allclose(b, a, rtol=1e-3, atol=1e-5, equal_nan=True):
                raise error(f"output '{out.name}' changed by up to {float(np.nanmax(abs(b - a))):.3g}; nothing written")
            finite = np.isfinite(a) & np.isfinite(b)
            worst = max(worst, float(abs(b[finite] - a[finite]).max(initial=0.0)))
        elif not np.array_equal(a, b):
            raise error(f"output '{out.name}' changed; nothing written")
    return worst


def _random_inputs(model: onnx.ModelProto, seed: int, error, dims: dict[str, int]) -> dict[str, np.ndarray]:
    graph = model.graph
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    bound: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and inits.get(node.input[0]):
            bound[node.input[1]] = min(bound.get(node.input[1], 1 << 62), inits[node.input[0]][0])
    rng = np.random.default_rng(seed)
    feeds, total = {}, 0
    for v in graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else dims.get(d.dim_param, 2)
                 for d in t.shape.dim]
        total += int(np.prod(shape, dtype=np.float64))  # float: a hostile shape must not overflow the sum
        if total > MAX_INPUT_ELEMENTS:
            raise error(f"its inputs ({v.name}: {shape}, …) need more than {MAX_INPUT_ELEMENTS:,} random values, "
                        "the limit for the check")
        if dtype.kind == "f":
            feeds[v.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[v.name] = rng.integers(0, max(1, bound.get(v.name, 2)), shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[v.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise error(f"input '{v.name}' has type {dtype}, for which no random values are drawn")
    return feeds
