"""The live module is real Python: it pickles whole (into a fresh process too), deep-copies, and
`inspect` and tracebacks show the source that ran, even for two specs with the same model name."""
from __future__ import annotations

import copy
import inspect
import pickle
import subprocess
import sys
from pathlib import Path

import torch

import tiec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
A = "model M {\n    in x: [B, 4]\n    fc = Linear(4, 4)\n    return relu(fc(x))\n}\n"
B = "model M {\n    in x: [B, 4]\n    fc = Linear(4, 4)\n    return tanh(fc(x))\n}\n"


def test_same_model_name_in_two_specs_keeps_its_own_source():
    ma, mb = tiec.loads(A, filename="a.tie").torch(model="M"), tiec.loads(B, filename="b.tie").torch(model="M")
    fa, fb = inspect.getsource(type(ma).forward), inspect.getsource(type(mb).forward)
    assert "relu" in fa and "tanh" not in fa
    assert "tanh" in fb and "relu" not in fb
    assert type(ma).__module__ != type(mb).__module__


def test_whole_module_pickles_and_deep_copies_with_sharing_kept():
    m = tiec.load(EXAMPLES / "tied_lm.tie").torch(model="TiedLM", seed=1).eval()
    x = torch.randint(0, 1000, (2, 5))
    for clone in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert clone.lm_head.weight is clone.embed.weight
        assert torch.equal(clone(x), m(x))
        assert len(list(clone.parameters())) == len(list(m.parameters())) == 3


def test_torch_save_loads_in_a_fresh_process(tmp_path):
    m = tiec.load(EXAMPLES / "siamese.tie").torch(model="Siamese", seed=2).eval()
    left, right = torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        want = m(left, right)
    torch.save(m, tmp_path / "m.pt")
    torch.save({"left": left, "right": right, "want": want}, tmp_path / "io.pt")
    code = (
        "import torch, sys\n"
        "m = torch.load(sys.argv[1], weights_only=False).eval()\n"
        "io = torch.load(sys.argv[2])\n"
        "with torch.no_grad():\n"
        "    got = m(io['left'], io['right'])\n"
        "print(float((got - io['want']).abs().max()), len(list(m.parameters())))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pt"), str(tmp_path / "io.pt")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    diff, n = r.stdout.split()
    assert float(diff) == 0.0 and int(n) == len(list(m.parameters()))
