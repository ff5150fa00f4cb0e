"""Backends: a compiled `ProgramIR` in, a runnable artefact out; nothing here changes the IR.

- `tiec.backends.torch`: one Python code generator, whose source is both the emitted `.py` file
  (`generate_source`) and, compiled, the live `nn.Module` (`build_module`).
- `tiec.backends.onnx`: one model straight from the IR to an ONNX file (`export`), with one
  initializer per share group; `onnx` and protobuf stay inside that package.

Each backend lowers an op or layer kind through its own table (`TORCH_EMIT`, `ONNX_EMIT`), one
row per entry of the IR's closed op set.
"""
