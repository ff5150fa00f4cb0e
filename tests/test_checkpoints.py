"""Checkpoints that keep share groups: `program.save`, `program.load_weights`, `--weights` files.

References: the safetensors library's own readers, `transformers`' checkpoint loader, and
`nn.Module.load_state_dict(strict=True)` of a module tiec did not build the state dict for.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import tiec
from tiec import cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LM = "model LM {\n    in t: i64[B, T]\n    wte = Embedding(10, 4)\n    lm_head = Linear(4, 10, bias=false) share weight = wte.weight\n    return lm_head(wte(t))\n}\n"
AE = ("model AE {\n    in x: [B, 6]\n    enc = Linear(6, 3)\n    dec = Linear(3, 6) share weight = enc.weight.T\n"
      "    return dec(relu(enc(x)))\n}\n")


def test_save_writes_one_tensor_per_group_and_records_the_aliases(tmp_path):
    program = tiec.loads(LM)
    module = program.torch(seed=1)
    info = program.save(module, tmp_path / "w.safetensors")
    stored = safetensors.torch.load_file(tmp_path / "w.safetensors")
    assert sorted(stored) == ["wte.weight"]  # lm_head.weight is the same tensor: stored once
    assert torch.equal(stored["wte.weight"], module.wte.weight.detach())
    with safetensors.safe_open(tmp_path / "w.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["lm_head.weight"] == "wte.weight"
    assert json.loads(meta["tiec.groups"]) == [{"tensor": "wte.weight",
                                                "aliases": [{"key": "lm_head.weight", "transposed": False}]}]
    assert info == {"path": str(tmp_path / "w.safetensors"), "tensors": 1, "aliases": 1,
                    "bytes": (tmp_path / "w.safetensors").stat().st_size}


def test_a_transposed_member_is_marked(tmp_path):
    program = tiec.loads(AE)
    program.save(program.torch(), tmp_path / "w.safetensors")
    with safetensors.safe_open(tmp_path / "w.safetensors", "pt") as f:
        assert sorted(f.keys()) == ["dec.bias", "enc.bias", "enc.weight"]
        assert f.metadata()["dec.weight"] == "enc.weight.T"


def test_save_file_of_a_tied_state_dict_fails_and_program_save_is_the_way(tmp_path):
    program = tiec.loads(LM)
    module = program.torch()
    with pytest.raises(RuntimeError, match="share memory"):
        safetensors.torch.save_file(module.state_dict(), tmp_path / "bad.safetensors")
    program.save(module, tmp_path / "w.safetensors")
    other = program.torch(seed=7)
    other.load_state_dict(program.load_weights(tmp_path / "w.safetensors"), strict=True)
    assert other.lm_head.weight is other.wte.weight  # still one parameter after loading
    assert torch.equal(other.wte.weight, module.wte.weight)


SMALL = {  # the large examples at a size that keeps the test quick; their sharing is unchanged
    "albert": {"vocab": 500, "d": 64, "ffn": 128, "heads": 2, "layers": 2},
    "bert": {"vocab": 500, "d": 64, "ffn": 128, "heads": 2, "layers": 2},
    "gpt2_small": {"vocab": 500, "context": 32, "d": 64, "heads": 2, "layers": 2},
    "hf_gpt2": {"vocab": 500, "n_positions": 32, "d": 64, "heads": 2, "layers": 2},
    "hf_bert": {"vocab": 500, "n_positions": 32, "d": 64, "heads": 2, "layers": 2, "ffn": 128},
    "llama": {"vocab": 500, "d": 64, "n_layers": 2, "heads": 4, "kv": 2, "ffn": 128},
    "hf_albert": {"vocab": 500, "n_positions": 32, "e": 16, "d": 64, "heads": 2, "layers": 2, "intermediate": 128},
}


@pytest.mark.parametrize("spec", sorted(EXAMPLES.glob("*.tie")), ids=lambda p: p.stem)
def test_every_example_round_trips_through_a_checkpoint(spec, tmp_path):
    program = tiec.load(spec, SMALL.get(spec.stem))
    for model in (None, *program.models) if len(program.models) > 1 else (None,):
        module = program.torch(model, seed=3)
        path = tmp_path / f"{model}.safetensors"
        program.save(module, path, model)
        fresh = program.torch(model, seed=4)
        loaded = program.load_weights(path, model)
        assert sorted(loaded) == sorted(fresh.state_dict())
        fresh.load_state_dict(loaded, strict=True)
        for (name, a), (_, b) in zip(module.state_dict().items(), fresh.state_dict().items()):
            assert torch.equal(a, b), name


def test_a_checkpoint_that_kept_another_members_key_loads(tmp_path):
    program = tiec.loads(LM)
    module = program.torch(seed=2)
    head_only = {"lm_head.weight": module.lm_head.weight.detach().clone()}  # what save_model may keep
    safetensors.torch.save_file(head_only, tmp_path / "head.safetensors")
    loaded = program.load_weights(tmp_path / "head.safetensors")
    assert sorted(loaded) == ["lm_head.weight", "wte.weight"]
    assert torch.equal(loaded["wte.weight"], module.wte.weight.detach())
    arrays = program.weights_for("LM", tmp_path / "head.safetensors")
    assert np.array_equal(arrays["wte.weight"], module.wte.weight.detach().numpy())


def test_safetensors_save_model_output_loads(tmp_path):
    program = tiec.loads(LM)
    module = program.torch(seed=5)
    safetensors.torch.save_model(module, tmp_path / "m.safetensors")  # drops one of the two keys
    fresh = program.torch(seed=6)
    fresh.load_state_dict(program.load_weights(tmp_path / "m.safetensors"), strict=True)
    assert torch.equal(fresh.wte.weight, module.wte.weight)


def test_a_transposed_members_key_is_read_transposed(tmp_path):
    program = tiec.loads(AE)
    enc = torch.arange(18, dtype=torch.float32).reshape(3, 6)
    state = {"dec.weight": enc.T.contiguous(), "enc.bias": torch.zeros(3), "dec.bias": torch.ones(6)}
    loaded = program.load_weights(_save_pt(tmp_path / "w.pt", state))
    assert torch.equal(loaded["enc.weight"], enc) and "dec.weight" not in loaded


def test_two_members_with_different_values_are_an_error_naming_both(tmp_path):
    program = tiec.loads(LM)
    state = {"wte.weight": torch.zeros(10, 4), "lm_head.weight": torch.ones(10, 4)}
    safetensors.torch.save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(tiec.TieError) as info:
        program.load_weights(tmp_path / "w.safetensors")
    assert info.value.message == "weights 'wte.weight' and 'lm_head.weight' are one shared tensor, but hold different values"
    state["lm_head.weight"] = torch.zeros(10, 4)  # equal copies are one tensor, saved twice
    assert sorted(program.load_weights(state)) == ["lm_head.weight", "wte.weight"]


def test_transformers_reads_the_file(tmp_path):
    from transformers.modeling_utils import load_state_dict

    program = tiec.loads(LM)
    module = program.torch(seed=8)
    path = tmp_path / "model.safetensors"
    program.save(module, path)
    state = load_state_dict(str(path))  # checks the "format" metadata, as from_pretrained does
    assert torch.equal(state["wte.weight"], module.wte.weight.detach())


def _save_pt(path, state):
    torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_export_from_a_checkpoint_gives_the_bytes_of_exporting_the_module(suffix, tmp_path):
    spec = tmp_path / "lm.tie"
    spec.write_text(LM)
    program = tiec.load(spec)
    module = program.torch(seed=9)
    weights = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        program.save(module, weights)
    else:
        torch.save({"lm_head.weight": module.lm_head.weight.detach()}, weights)
    program.onnx(tmp_path / "direct.onnx", weights=module)
    assert cli.main(["export", str(spec), "-o", str(tmp_path / "file.onnx"), "--weights", str(weights)]) == 0
    assert (tmp_path / "file.onnx").read_bytes() == (tmp_path / "direct.onnx").read_bytes()


def test_the_all_models_module_round_trips(tmp_path):
    program = tiec.load(EXAMPLES / "tied_lm.tie")
    both = program.torch(seed=1)
    program.save(both, tmp_path / "all.safetensors")
    stored = safetensors.torch.load_file(tmp_path / "all.safetensors")
    assert "TiedLM.lm_head.weight" not in stored and "TiedLM.embed.weight" in stored
    arrays = program.weights_for("TiedLM", tmp_path / "all.safetensors")
    assert np.array_equal(arrays["embed.weight"], both.TiedLM.embed.weight.detach().numpy())


def test_half_precision_is_never_cast_silently(tmp_path):
    program = tiec.loads(AE)
    module = program.torch().half()
    try:
        program.save(module, tmp_path / "w.safetensors")
    except tiec.TieError as e:  # a parameter declared f32 may refuse f16 values outright
        assert "has dtype float16, but the parameter is f32" in e.message
        assert not (tmp_path / "w.safetensors").exists()
        return
    stored = safetensors.torch.load_file(tmp_path / "w.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}  # else: stored as given
    assert program.load_weights(tmp_path / "w.safetensors")["enc.weight"].dtype == torch.float16


def test_save_refuses_keys_it_would_drop(tmp_path):
    program = tiec.loads(AE)
    state = {**program.torch().state_dict(), "extra.weight": torch.zeros(2)}
    with pytest.raises(tiec.TieError) as info:
        program.save(state, tmp_path / "w.safetensors")
    assert info.value.message == "the weights hold 1 key(s) that name no parameter of AE: 'extra.weight'"
    assert not (tmp_path / "w.safetensors").exists()


def test_save_refuses_missing_and_nonfinite_weights(tmp_path):
    program = tiec.loads(AE)
    state = program.torch().state_dict()
    with pytest.raises(tiec.TieError, match=r"the weights lack 1 parameter\(s\) of AE: enc.bias"):
        program.save({k: v for k, v in state.items() if k != "enc.bias"}, tmp_path / "w.safetensors")
    state["enc.bias"] = torch.tensor([0.0, float("nan"), 0.0])
    with pytest.raises(tiec.TieError, match="weight 'enc.bias' holds 1 non-finite value"):
        program.save(state, tmp_path / "w.safetensors")
    program.save(state, tmp_path / "w.safetensors", allow_nonfinite=True)
    assert torch.isnan(safetensors.torch.load_file(tmp_path / "w.safetensors")["enc.bias"][1])


def test_save_takes_numpy_arrays_and_views_of_one_buffer(tmp_path):
    program = tiec.loads(AE)
    buffer = torch.arange(18 + 3 + 6, dtype=torch.float32)  # three parameters carved from one storage
    state = {"enc.weight": buffer[:18].view(3, 6), "enc.bias": buffer[18:21], "dec.bias": buffer[21:].numpy()}
    program.save(state, tmp_path / "w.safetensors")
    stored = safetensors.torch.load_file(tmp_path / "w.safetensors")
    assert torch.equal(stored["enc.weight"].flatten(), buffer[:18]) and torch.equal(stored["dec.bias"], buffer[21:])
