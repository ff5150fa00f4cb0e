"""examples/t5.tie against transformers' T5ForConditionalGeneration built from a small config: the
relative-position buckets against HF's `_relative_position_bucket` (both directions, sequences
longer than max_distance), each layer against HF's module, and the whole model: the reference's
own state dict loads strictly, logits and encoder states match in eval mode with a padded
attention mask, onnxruntime matches torch, the tied matrix is stored once, and the unique
parameters are the reference's."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5 import modeling_t5

import tiec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "t5.tie"
SIZES = {"vocab": 100, "d": 32, "d_kv": 8, "d_ff": 64, "n_layers": 2, "n_decoder_layers": 2, "heads": 4,
         "buckets": 32, "max_distance": 20}
MIN = torch.finfo(torch.float32).min

# Each piece of the example alone, as HF's module of the same name takes its inputs.
PIECES = """
model Bidirectional(buckets = 32, max_distance = 20) {
    in rel: i64[Q, K]
    relative = BidirectionalBucket(buckets, max_distance)
    return relative(rel)
}

model Causal(buckets = 32, max_distance = 20) {
    in rel: i64[Q, K]
    relative = CausalBucket(buckets, max_distance)
    return relative(rel)
}

model EncoderFirstSelfAttention(d = 32, heads = 4, d_kv = 8, buckets = 32, max_distance = 20) {
    in x: [B, T, d]
    in attention_mask: i64[B, T]
    relative = BidirectionalBucket(buckets, max_distance)
    layer = T5FirstLayerSelfAttention(d, heads, d_kv, buckets, 1e-6)
    p = positions(attention_mask)
    pad = where(unsqueeze(unsqueeze(gt(attention_mask, 0), 1), 1), 0.0, -1e9)
    y, position_bias = layer(x, relative(unsqueeze(p, 0) - unsqueeze(p, 1)), pad)
    return y
}

model DecoderFirstSelfAttention(d = 32, heads = 4, d_kv = 8, buckets = 32, max_distance = 20) {
    in x: [B, T, d]
    relative = CausalBucket(buckets, max_distance)
    layer = T5FirstLayerSelfAttention(d, heads, d_kv, buckets, 1e-6)
    p = positions(select(x, -1, 0))
    rel = unsqueeze(p, 0) - unsqueeze(p, 1)
    y, position_bias = layer(x, relative(rel), unsqueeze(unsqueeze(where(gt(rel, 0), -1e9, 0.0), 0), 0))
    return y
}

model LaterSelfAttention(d = 32, heads = 4, d_kv = 8) {
    in x: [B, T, d]
    in position_bias: [1, heads, T, T]
    layer = T5LayerSelfAttention(d, heads, d_kv, 1e-6)
    return layer(x, position_bias)
}

model CrossAttention(d = 32, heads = 4, d_kv = 8) {
    in x: [B, T, d]
    in enc: [B, S, d]
    in attention_mask: i64[B, S]
    layer = T5LayerCrossAttention(d, heads, d_kv, 1e-6)
    return layer(x, enc, where(unsqueeze(unsqueeze(gt(attention_mask, 0), 1), 1), 0.0, -1e9))
}

model FeedForward(d = 32, d_ff = 64) {
    in x: [B, T, d]
    layer = T5LayerFF(d, d_ff, 1e-6)
    return layer(x)
}
"""


def config(**extra) -> T5Config:
    sizes = {"vocab_size": 100, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
             "num_heads": 4, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 20}
    return T5Config(**{**sizes, **extra}, attn_implementation="eager")


def pieces(overrides=None):
    return tiec.loads(EXAMPLE.read_text() + PIECES, overrides, filename="t5.tie + test pieces")


def relative_positions(t: int) -> torch.Tensor:
    pos = torch.arange(t)
    return pos[None, :] - pos[:, None]  # key position − query position, as HF's compute_bias


def padded(b: int, t: int) -> torch.Tensor:
    mask = torch.ones(b, t, dtype=torch.int64)
    mask[0, t // 2:] = 0  # the first sequence is padded
    return mask


def additive(mask: torch.Tensor) -> torch.Tensor:
    """HF's eager padding mask: 0 at a token, the lowest float at padding."""
    return (1.0 - mask[:, None, None, :].float()) * MIN


@pytest.mark.parametrize(("buckets", "max_distance"), [(32, 20), (32, 128), (8, 10)])
def test_buckets_match_hf_in_both_directions(buckets, max_distance, tmp_path):
    program = pieces({"buckets": buckets, "max_distance": max_distance})
    for name, bidirectional in (("Bidirectional", True), ("Causal", False)):
        module = program.torch(name)
        path = tmp_path / f"{name}.onnx"
        program.onnx(path, model=name)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for t in (1, 7, max_distance, max_distance + 1, 3 * max_distance):  # past max_distance: the last bucket
            rel = relative_positions(t)
            want = modeling_t5.T5Attention._relative_position_bucket(
                rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance)
            assert torch.equal(module(rel), want), (name, t)
            assert np.array_equal(session.run(None, {"rel": rel.numpy()})[0], want.numpy()), (name, t)


def _randomized(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # away from HF's init (ones in the norms), so a misplaced weight shows
        gen = torch.Generator().manual_seed(3)
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.eval()


def _layer_cases(t: int):
    """(piece, HF module, its inputs for the piece, HF's forward of them)."""
    gen = torch.Generator().manual_seed(t)
    x = torch.randn(2, t, 32, generator=gen)
    mask = padded(2, t)
    enc, enc_mask = torch.randn(2, t + 3, 32, generator=gen), padded(2, t + 3).flip(0)
    bias = torch.randn(1, 4, t, t, generator=gen)
    causal = torch.triu(torch.full((t, t), MIN), 1)[None, None]
    enc_cfg, dec_cfg = config(is_decoder=False), config(is_decoder=True)
    first_enc = _randomized(modeling_t5.T5LayerSelfAttention(enc_cfg, has_relative_attention_bias=True))
    first_dec = _randomized(modeling_t5.T5LayerSelfAttention(dec_cfg, has_relative_attention_bias=True, layer_idx=0))
    later = _randomized(modeling_t5.T5LayerSelfAttention(enc_cfg))
    cross = _randomized(modeling_t5.T5LayerCrossAttention(dec_cfg, layer_idx=0))
    ff = _randomized(modeling_t5.T5LayerFF(enc_cfg))
    return [
        ("EncoderFirstSelfAttention", first_enc, (x, mask), lambda: first_enc(x, attention_mask=additive(mask))[0]),
        ("DecoderFirstSelfAttention", first_dec, (x,), lambda: first_dec(x, attention_mask=causal)[0]),
        ("LaterSelfAttention", later, (x, bias), lambda: later(x, position_bias=bias)[0]),
        ("CrossAttention", cross, (x, enc, enc_mask), lambda: cross(x, enc, attention_mask=additive(enc_mask))[0]),
        ("FeedForward", ff, (x,), lambda: ff(x)),
    ]


def test_each_layer_matches_hfs_module(tmp_path):
    program = pieces()
    sessions = {}
    for t in (6, 45):  # 45 > 2 · max_distance: every bucket is used
        for name, reference, inputs, forward in _layer_cases(t):
            module = program.torch(name).eval()
            module.layer.load_state_dict(reference.state_dict(), strict=True)  # HF's keys under `layer.`
            with torch.no_grad():
                want, got = forward(), module(*inputs)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"{name}, T = {t}")
            if name not in sessions:
                path = tmp_path / f"{name}.onnx"
                program.onnx(path, model=name, weights=module)
                sessions[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feeds = dict(zip((i.name for i in sessions[name].get_inputs()), (i.numpy() for i in inputs), strict=True))
            np.testing.assert_allclose(sessions[name].run(None, feeds)[0], got.numpy(), rtol=1e-3, atol=1e-5)


def reference(**extra) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    return T5ForConditionalGeneration(config(**extra)).eval()


def batch(b: int, s: int, t: int):
    gen = torch.Generator().manual_seed(s * 100 + t)
    return torch.randint(0, 100, (b, s), generator=gen), padded(b, s), torch.randint(0, 100, (b, t), generator=gen)


def test_t5_loads_the_reference_checkpoint_and_matches_it(tmp_path):
    hf = reference()
    program = tiec.load(EXAMPLE, SIZES)
    module = program.torch().eval()
    module.load_state_dict(hf.state_dict(), strict=True)  # HF's own keys, no renaming
    shared = module.shared.weight
    assert module.encoder.embed_tokens.weight is shared and module.decoder.embed_tokens.weight is shared
    assert module.lm_head.weight is shared
    stats = program.stats()["models"]["T5ForConditionalGeneration"]
    assert stats["unique_params"] == sum(p.numel() for p in hf.parameters())  # HF counts `shared` once
    ids, mask, dec = batch(2, 9, 7)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        logits, encoded = module(ids, mask, dec)
    torch.testing.assert_close(logits, want.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoded, want.encoder_last_hidden_state, rtol=1e-5, atol=1e-5)

    path = tmp_path / "t5.onnx"
    program.onnx(path, weights=module)
    params = [i for i in onnx.load(path).graph.initializer if not i.name.startswith("~")]
    assert [i.name for i in params if tuple(i.dims) == (100, 32)] == ["shared.weight"]  # the tied matrix, once
    assert sum(len(i.raw_data) for i in params) == stats["unique_bytes"]  # every tensor once, nothing else
    # the rest is the graph (~20 kB), a tenth of these 179 kB of weights (at t5-small's sizes, 1.0002×)
    assert path.stat().st_size / stats["unique_bytes"] < 1.15
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, s, t in ((2, 9, 7), (3, 45, 30)):  # sequences longer than max_distance through the same file
        ids, mask, dec = batch(b, s, t)
        with torch.no_grad():
            want = [v.numpy() for v in module(ids, mask, dec)]
        outs = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                  "decoder_input_ids": dec.numpy()})
        for have, ref in zip(outs, want, strict=True):
            np.testing.assert_allclose(have, ref, rtol=1e-3, atol=1e-5)


def test_the_emitted_class_takes_the_depths_as_hfs_config_does(tmp_path):
    path = tmp_path / "t5.py"
    path.write_text(tiec.load(EXAMPLE, SIZES).python())
    spec = importlib.util.spec_from_file_location("t5_emitted", path)
    emitted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emitted)
    sizes = {k: v for k, v in SIZES.items() if k not in ("n_layers", "n_decoder_layers")}
    module = emitted.T5ForConditionalGeneration(**sizes, n_layers=4, n_decoder_layers=3).eval()  # block.0 … block.3
    hf = reference(num_layers=4, num_decoder_layers=3)
    module.load_state_dict(hf.state_dict(), strict=True)
    ids, mask, dec = batch(2, 25, 6)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        logits, encoded = module(ids, mask, dec)
    torch.testing.assert_close(logits, want.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoded, want.encoder_last_hidden_state, rtol=1e-5, atol=1e-5)


def test_t5_compiles_in_bf16_and_stays_as_close_to_fp32_as_hfs_bf16_model():
    """bf16 rounds each value to 8 significant bits (~0.03 at logits of ~5), so the bound here is
    HF's own bf16 error against fp32, not 1e-5."""
    ids, mask, dec = batch(2, 9, 7)
    with torch.no_grad():
        exact = reference()(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    hf = reference().to(torch.bfloat16)
    module = tiec.load(EXAMPLE, SIZES, dtype="bf16").torch().eval()
    module.load_state_dict(hf.state_dict(), strict=True)  # a bf16 checkpoint into bf16 parameters, no cast
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        ours, _ = module(ids, mask, dec)
    assert ours.dtype == torch.bfloat16
    hf_error = (theirs.float() - exact).abs().max().item()
    assert (ours.float() - exact).abs().max().item() <= 1.5 * hf_error
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=0.02, atol=0.1)
