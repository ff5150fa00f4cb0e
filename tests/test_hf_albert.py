"""examples/hf_albert.tie against transformers' AlbertForMaskedLM built from small configs: the
reference's own state dict loads strictly, logits match in eval mode with a padding mask and token
types, gradients match through the tied head, onnxruntime matches torch at several lengths through
one file, each tied group is one initializer, and the unique parameters are the reference's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AlbertConfig, AlbertForMaskedLM

import tiec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hf_albert.tie"
VOCAB, E, D = 100, 16, 32


def sizes(layers: int, groups: int, inner: int) -> dict:
    return {"vocab": VOCAB, "n_positions": 40, "e": E, "d": D, "layers": layers, "heads": 4,
            "intermediate": 64, "groups": groups, "inner": inner}


def reference(layers: int, groups: int, inner: int) -> AlbertForMaskedLM:
    torch.manual_seed(0)
    config = AlbertConfig(vocab_size=VOCAB, embedding_size=E, hidden_size=D, num_hidden_layers=layers,
                          num_hidden_groups=groups, inner_group_num=inner, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=40, attn_implementation="eager")
    return AlbertForMaskedLM(config).eval()


def batch(b: int, t: int):
    gen = torch.Generator().manual_seed(t)
    ids = torch.randint(0, VOCAB, (b, t), generator=gen)
    mask = torch.ones(b, t, dtype=torch.int64)
    mask[0, t // 2:] = 0  # the first sequence is padded
    return ids, mask, torch.randint(0, 2, (b, t), generator=gen)


def loaded(layers: int = 3, groups: int = 1, inner: int = 1):
    hf = reference(layers, groups, inner)
    program = tiec.load(EXAMPLE, sizes(layers, groups, inner))
    module = program.torch(seed=1).eval()
    module.load_state_dict(hf.state_dict(), strict=True)  # HF's own keys, no renaming
    return hf, program, module


def test_hf_albert_loads_the_reference_checkpoint_and_matches_it(tmp_path):
    hf, program, module = loaded()
    assert module.predictions.decoder.weight is module.albert.embeddings.word_embeddings.weight
    assert module.predictions.decoder.bias is module.predictions.bias
    stats = program.stats()["models"]["AlbertForMaskedLM"]
    assert stats["unique_params"] == sum(p.numel() for p in hf.parameters())
    assert stats["unique_params"] == sum(p.numel() for p in module.parameters())
    ids, mask, types = batch(2, 7)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = module(ids, mask, types)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # padding counts: without the mask the padded sequence's logits move
    with torch.no_grad():
        unmasked = module(ids, torch.ones_like(mask), types)
    assert (unmasked[0] - want[0]).abs().max() > 1e-3

    path = tmp_path / "albert.onnx"
    program.onnx(path, weights=module)
    params = [i for i in onnx.load(path).graph.initializer if not i.name.startswith("~")]
    assert len([i for i in params if tuple(i.dims) == (VOCAB, E)]) == 1  # the tied matrix, once
    assert len([i for i in params if tuple(i.dims) == (VOCAB,)]) == 1  # predictions.bias, once
    assert sum(int(np.prod(i.dims)) for i in params) == stats["unique_params"]
    assert sum(len(i.raw_data) for i in params) == stats["unique_bytes"]  # every tensor stored once, inline
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, t in ((2, 7), (3, 4), (1, 12)):  # one file, several batch sizes and lengths
        ids, mask, types = batch(b, t)
        with torch.no_grad():
            want = module(ids, mask, types).numpy()
        out = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                 "token_type_ids": types.numpy()})[0]
        np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-5)


def test_gradients_through_the_tied_head_match_the_reference():
    hf, _, module = loaded()
    hf.train()
    module.train()  # ALBERT's dropouts default to 0, so train mode is deterministic on both sides
    ids, mask, types = batch(2, 6)
    hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.square().mean().backward()
    module(ids, mask, types).square().mean().backward()
    ours = dict(module.named_parameters())
    theirs = dict(hf.named_parameters())
    assert sorted(ours) == sorted(theirs)  # one entry per tensor on both sides
    for name, p in theirs.items():
        torch.testing.assert_close(ours[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("layers, groups, inner", [(4, 2, 2), (6, 3, 1)])
def test_several_layer_groups_and_inner_layers(layers, groups, inner):
    """num_hidden_groups and inner_group_num: `repeat groups { repeat layers // groups share … }`
    runs group i for layers i·L/G … (i+1)·L/G − 1, as HF's int(i / (L / G)) does."""
    hf, program, module = loaded(layers, groups, inner)
    assert program.stats()["models"]["AlbertForMaskedLM"]["unique_params"] == sum(p.numel() for p in hf.parameters())
    ids, mask, types = batch(2, 5)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        got = module(ids, mask, types)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
