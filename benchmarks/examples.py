"""The real-architecture examples against their references, one row each: the reference's own state
dict loaded with `strict=True`, max |diff| of tiec's module against the reference (eval, fp32), max
|diff| of onnxruntime against tiec's module, unique parameters (`tiec stats`) against
`sum(p.numel() for p in reference.parameters())`, and ONNX file bytes ÷ unique parameter bytes.

The references and sizes are the tests' (tests/test_hf_*.py, test_t5.py, test_resnet18.py,
test_rnn.py): transformers models built from small configs, and torch.nn modules, so the figures
are those the tests assert. The file ratio at these sizes includes the graph itself (tens of kB
beside weights of a few hundred kB); the tests also assert that parameter initializers hold
exactly the unique bytes.
"""
from __future__ import annotations

import importlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tiec
import torch

import references  # noqa: F401  (puts the repository on the path, for the tests' references)
from common import Figure

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass
class Row:
    spec: str
    sizes: dict
    reference: Callable[[], torch.nn.Module]
    inputs: list[torch.Tensor]  # tiec's module's inputs, in order
    run_reference: Callable[[torch.nn.Module], torch.Tensor]  # the compared output
    pick: Callable[[object], torch.Tensor] = lambda out: out[0] if isinstance(out, tuple) else out
    # sizes of the model's own layout for the file ratio alone (fresh weights, no reference)
    at_size: dict | None = None


def _rows() -> list[Row]:
    albert, bert, gpt2 = (importlib.import_module(f"tests.test_hf_{m}") for m in ("albert", "bert", "gpt2"))
    llama, t5, resnet = (importlib.import_module(f"tests.{m}") for m in ("test_hf_llama", "test_t5", "test_resnet18"))
    rnn = importlib.import_module("tests.test_rnn")
    ids, mask, types = albert.batch(2, 9)
    b_ids, b_mask, b_types = bert.batch(2, 9)
    tokens = torch.randint(0, 100, (2, 11), generator=torch.Generator().manual_seed(1))
    t5_ids, t5_dec = tokens[:, :9], tokens[:, :7]
    t5_mask = t5.padded(2, 9)
    x = torch.randn(3, 13, 6, generator=torch.Generator().manual_seed(13))
    gru_state, lstm_state = rnn.states("gru", 3, 13), rnn.states("lstm", 3, 13)
    return [
        Row("hf_albert", albert.sizes(3, 1, 1), lambda: albert.reference(3, 1, 1), [ids, mask, types],
            lambda r: r(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
            at_size={"layers": 12}),
        Row("hf_bert", bert.SIZES, bert.reference, [b_ids, b_mask, b_types],
            lambda r: r(input_ids=b_ids, attention_mask=b_mask, token_type_ids=b_types).last_hidden_state,
            at_size={"layers": 2}),
        Row("hf_gpt2", gpt2.SIZES, gpt2.reference, [tokens], lambda r: r(tokens).logits, at_size={"layers": 2}),
        Row("llama", llama.SIZES, llama.reference, [tokens], lambda r: r(tokens).logits,
            at_size={"vocab": 32000, "d": 512, "n_layers": 2, "heads": 8, "kv": 4, "ffn": 1408}),
        Row("t5", t5.SIZES, lambda: importlib.import_module("transformers").T5ForConditionalGeneration(
            t5.config()).eval(), [t5_ids, t5_mask, t5_dec],
            lambda r: r(input_ids=t5_ids, attention_mask=t5_mask, decoder_input_ids=t5_dec).logits, at_size={}),
        Row("resnet18", {"num_classes": 10}, resnet.reference, [resnet.IMAGES], lambda r: r(resnet.IMAGES),
            at_size={}),
        Row("gru", rnn.SIZES, rnn.gru, [x, *gru_state], lambda r: r(x, gru_state[0])[0],
            at_size={"input_size": 256, "hidden_size": 512}),
        Row("lstm", rnn.SIZES, rnn.lstm, [x, *lstm_state], lambda r: r(x, lstm_state)[0],
            at_size={"input_size": 256, "hidden_size": 512}),
    ]


def measure(row: Row, tmp: Path) -> dict:
    torch.manual_seed(0)
    ref = row.reference().eval()
    program = tiec.load(EXAMPLES / f"{row.spec}.tie", row.sizes)
    module = program.torch().eval()
    module.load_state_dict(ref.state_dict(), strict=True)  # raises on any missing or unexpected key
    with torch.no_grad():
        ours = row.pick(module(*row.inputs))
        torch_diff = (ours - row.run_reference(ref)).abs().max().item()
    path = tmp / f"{row.spec}.onnx"
    program.onnx(path, weights=module)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), row.inputs)}
    ort_diff = float(np.abs(session.run(None, feeds)[0] - ours.numpy()).max())
    model = next(iter(program.ir.models))
    unique = program.stats()["models"][model]["unique_params"]
    reference_params = sum(p.numel() for p in ref.parameters())
    unique_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in module.parameters()}.values())
    out = {"torch": torch_diff, "ort": ort_diff, "unique": unique, "reference": reference_params,
           "file": path.stat().st_size / unique_bytes}
    if row.at_size is not None:  # the spec's own defaults, with these overrides: the file ratio at size
        big = tiec.load(EXAMPLES / f"{row.spec}.tie", row.at_size)
        big.onnx(path, weights=big.torch())
        stats = big.stats()["models"][model]
        out["file_at_size"] = path.stat().st_size / stats["unique_bytes"]
        out["unique_at_size"] = stats["unique_params"]
    return out


def run(quick: bool = False) -> tuple[list[Figure], dict]:
    figures, rows = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in _rows():
            m = rows[row.spec] = measure(row, Path(tmp))
            note = f"strict load: yes; unique {m['unique']:,} vs reference {m['reference']:,}"
            figures += [
                Figure(f"{row.spec}: max |diff| torch vs reference", m["torch"], 1e-5, "<=", "the reference", note),
                Figure(f"{row.spec}: max |diff| onnxruntime vs torch", m["ort"], 1e-4, "<=", "tiec's module"),
                Figure(f"{row.spec}: unique params / reference's", m["unique"] / m["reference"], 1.0, "==",
                       "sum(p.numel() for p in reference.parameters())"),
                Figure(f"{row.spec}: ONNX file / unique param bytes", m["file"], None, "<=", "unique parameter bytes",
                       "test sizes: the graph itself is a visible share of a small file"),
            ]
            if "file_at_size" in m:
                figures.append(Figure(f"{row.spec}: ONNX file / unique param bytes at size", m["file_at_size"], 1.01,
                                      "<=", "unique parameter bytes", f"{m['unique_at_size']:,} parameters"))
    return figures, {"settings": {"rows": rows}}
