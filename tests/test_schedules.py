"""Sharing schedules across a repeat: forward, gradients and tensor counts against hand-written PyTorch,
and the ALBERT-base parameter table (Lan et al. 2020, Table 4, E = 128) from `tiec stats`.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiec.dsl.diagnostics import TieError
from torch import nn

import tiec

SPEC = """
block Layer(d) {
    in x: [B, d]
    attn = Linear(d, d)
    ffn = Linear(d, d)
    return ffn(relu(attn(x))) + x
}
model M(d = 5) {
    in x: [B, d]
    repeat COUNT share SCHEDULE {
        blk = Layer(d)
        x = blk(x)
    }
    return x
}
"""


class RefLayer(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.attn, self.ffn = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return self.ffn(F.relu(self.attn(x))) + x


class Reference(nn.Module):
    """k distinct layers, iteration i running layer `order[i]`: the schedule written out by hand."""

    def __init__(self, d: int, order: list[int]):
        super().__init__()
        self.order = order
        self.layers = nn.ModuleList([RefLayer(d) for _ in range(max(order) + 1)])

    def forward(self, x):
        for i in self.order:
            x = self.layers[i](x)
        return x


# the sequences from Takase & Kiyono (2023), Fig. 1, and the Subformer's sandwich, written by hand
CASES = {
    "cycle(3)": (6, [0, 1, 2, 0, 1, 2]),
    "cycle_rev(3)": (6, [0, 1, 2, 2, 1, 0]),
    "cycle_rev(3) ": (7, [0, 1, 2, 0, 1, 2, 2]),
    "sequence(3)": (6, [0, 0, 1, 1, 2, 2]),
    "cycle(2)": (5, [0, 1, 0, 1, 0]),
    "sandwich": (5, [0, 1, 1, 1, 2]),
}


def _build(schedule: str, count: int, seed: int = 0):
    program = tiec.loads(SPEC.replace("COUNT", str(count)).replace("SCHEDULE", schedule.strip()))
    return program, program.torch(seed=seed)


@pytest.mark.parametrize("schedule", list(CASES))
def test_schedule_forward_and_gradients_match_hand_written_layers(schedule):
    count, order = CASES[schedule]
    _, m = _build(schedule, count)
    ref = Reference(5, order)
    first = {b: order.index(b) for b in set(order)}  # the iteration that owns each distinct layer
    with torch.no_grad():
        for b, i in first.items():
            for name, p in ref.layers[b].named_parameters():
                p.copy_(m.blk[i].get_parameter(name))
    assert len(list(m.parameters())) == 4 * len(first)  # one tensor per distinct layer slot
    for i, b in enumerate(order):  # each copy holds its distinct layer's tensors, not equal copies
        assert m.blk[i].attn.weight is m.blk[first[b]].attn.weight
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)
    m(x).square().sum().backward()
    ref(x).square().sum().backward()
    for b, i in first.items():  # the gradient of a shared tensor is the sum over its uses
        torch.testing.assert_close(m.blk[i].attn.weight.grad, ref.layers[b].attn.weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(m.blk[i].ffn.bias.grad, ref.layers[b].ffn.bias.grad, rtol=1e-4, atol=1e-6)


def test_only_shares_the_named_sub_block():
    _, m = _build("only(blk.attn)", 4)
    assert all(m.blk[i].attn.weight is m.blk[0].attn.weight for i in range(4))
    assert len({id(m.blk[i].ffn.weight) for i in range(4)}) == 4
    assert len(list(m.parameters())) == 2 + 4 * 2

    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.Linear(5, 5)
            self.ffns = nn.ModuleList([nn.Linear(5, 5) for _ in range(4)])

        def forward(self, x):
            for ffn in self.ffns:
                x = ffn(F.relu(self.attn(x))) + x
            return x

    ref = Ref()
    with torch.no_grad():
        ref.attn.load_state_dict(m.blk[0].attn.state_dict())
        for i in range(4):
            ref.ffns[i].load_state_dict(m.blk[i].ffn.state_dict())
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)


def test_state_dict_keys_are_every_copy_and_the_copies_hold_one_tensor():
    _, m = _build("cycle(2)", 4)
    keys = set(m.state_dict())
    assert keys == {f"blk.{i}.{s}.{p}" for i in range(4) for s in ("attn", "ffn") for p in ("weight", "bias")}
    fresh = tiec.loads(SPEC.replace("COUNT", "4").replace("SCHEDULE", "cycle(2)")).torch(seed=9)
    fresh.load_state_dict(m.state_dict())
    torch.testing.assert_close(fresh.blk[2].attn.weight, m.blk[0].attn.weight)
    assert fresh.blk[2].attn.weight is fresh.blk[0].attn.weight  # loading keeps the groups


def test_stats_count_the_distinct_blocks():
    per_layer = 2 * (5 * 5 + 5)
    for schedule, (count, order) in CASES.items():
        program, _ = _build(schedule, count)
        s = program.stats()["models"]["M"]
        assert s["unique_params"] == per_layer * len(set(order)), schedule
        assert s["logical_params"] == per_layer * count


@pytest.mark.parametrize("schedule, message", [
    ("cycle(7)", "cycle(7) needs 1 to 6 distinct blocks for 6 iterations"),
    ("cycle", "cycle takes one argument"),
    ("rotate(2)", "unknown sharing schedule 'rotate'"),
    ("only(nothere.attn)", "'nothere' is not declared in this repeat"),
    ("only(blk.mlp)", "'blk.mlp' names no layer or parameter"),
])
def test_bad_schedules_are_located_errors(schedule, message):
    with pytest.raises(TieError) as err:
        tiec.loads(SPEC.replace("COUNT", "6").replace("SCHEDULE", schedule), filename="s.tie")
    text = err.value.render()
    assert message in text and text.startswith("s.tie:10:")


def test_sandwich_needs_three_iterations():
    with pytest.raises(TieError, match="a sandwich needs at least 3 iterations"):
        _build("sandwich", 2)


ALBERT = """
block EncoderLayer(d, heads, ffn) {
    in x: [B, T, d]
    attn = SelfAttention(d, heads)
    attn_norm = LayerNorm(d, eps=1e-12)
    up = Linear(d, ffn)
    down = Linear(ffn, d)
    ffn_norm = LayerNorm(d, eps=1e-12)
    h = attn_norm(x + attn(x))
    return ffn_norm(h + down(gelu(up(h))))
}

model Albert(vocab = 30000, e = 128, d = 768, heads = 12, ffn = 3072, layers = 12, max_len = 512, types = 2) {
    in tokens: i64[B, T]
    in token_types: i64[B, T]
    embed = Embedding(vocab, e)
    pos = Embedding(max_len, e)
    type_embed = Embedding(types, e)
    embed_norm = LayerNorm(e, eps=1e-12)
    project = Linear(e, d)
    x = project(embed_norm(embed(tokens) + pos(positions(tokens)) + type_embed(token_types)))
    repeat layers SCHEDULE {
        layer = EncoderLayer(d, heads, ffn)
        x = layer(x)
    }
    pooler = Linear(d, d)
    return x, tanh(pooler(mean(x, 1)))
}
"""
PAPER = {"share": 12e6, "share only(layer.attn, layer.attn_norm)": 64e6, "share only(layer.up, layer.down)": 38e6,
         "": 89e6}  # ALBERT-base, E = 128: all-shared, shared-attention, shared-FFN, not-shared


def _hf_albert(groups: int) -> int:
    from transformers import AlbertConfig, AlbertModel

    config = AlbertConfig(vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
                          num_hidden_groups=groups, num_attention_heads=12, intermediate_size=3072,
                          max_position_embeddings=512, type_vocab_size=2)
    with torch.device("meta"):
        return sum(p.numel() for p in AlbertModel(config).parameters())


def test_albert_base_parameter_table():
    got = {s: tiec.loads(ALBERT.replace("SCHEDULE", s)).stats()["models"]["Albert"]["unique_params"] for s in PAPER}
    assert got["share"] == _hf_albert(1)  # one layer group: every layer shared
    assert got[""] == _hf_albert(12)  # twelve groups: nothing shared
    d, ffn = 768, 3072
    attention = 4 * (d * d + d) + 2 * d  # q, k, v, output projections and the attention LayerNorm
    feed_forward = d * ffn + ffn + ffn * d + d
    assert got["share only(layer.attn, layer.attn_norm)"] == got[""] - 11 * attention
    assert got["share only(layer.up, layer.down)"] == got[""] - 11 * feed_forward
    for schedule, paper in PAPER.items():  # the paper rounds to millions
        assert abs(got[schedule] - paper) < 1e6, (schedule, got[schedule])


def test_emitted_constructor_aliases_each_copy_to_its_owner_in_one_loop():
    program, _ = _build("cycle_rev(3)", 6)
    src = program.python()
    assert "for i, j in ((3, 2), (4, 1), (5, 0)):  # cycle_rev(3): copy i runs copy j's tensors\n" \
           "            self.blk[i] = self.blk[j]" in src
    assert "# shared: group" not in src  # no line per slot
    albert = tiec.loads(ALBERT.replace("SCHEDULE", "share only(layer.attn, layer.attn_norm)"), {"vocab": 50})
    src = albert.python()
    pairs = tuple((i, 0) for i in range(1, 12))
    assert f"for i, j in {pairs}:  # only layer.attn: copy i runs copy j's tensors\n" \
           "            self.layer[i].attn = self.layer[j].attn" in src
    assert "self.layer[i].attn_norm = self.layer[j].attn_norm" in src


def test_a_schedule_whose_groups_reach_outside_the_repeat_is_written_slot_by_slot():
    spec = """
    model M {
        in x: [B, 4]
        base = Linear(4, 4)
        repeat 4 share cycle(2) {
            blk = Linear(4, 4) share weight = base.weight
            x = blk(x)
        }
        return base(x)
    }
    """
    program = tiec.loads(spec)
    m = program.torch(seed=0)
    assert all(m.blk[i].weight is m.base.weight for i in range(4))  # every copy's weight is base's
    assert m.blk[2].bias is m.blk[0].bias and m.blk[3].bias is m.blk[1].bias and m.blk[1].bias is not m.blk[0].bias
    x = torch.randn(2, 4)
    want = x
    for i in (0, 1, 0, 1):
        want = F.linear(want, m.base.weight, m.blk[i].bias)
    torch.testing.assert_close(m(x), m.base(want))
