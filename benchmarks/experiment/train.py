"""Training for the experiment: modules built by tiec from the specs beside this file, trained in
plain PyTorch (full-batch Adam, a fixed number of steps), scored by test accuracy.

Rule, for every run: the module is `program.torch(model, seed=seed)` (tiec's seeded
initialisation), the loss is the sum of each task's mean loss plus `module.tie_penalty()` (zero
for a model without ties), and the score is the argmax accuracy on the task's test images after
the last step. Nothing is tuned per model: every model gets the same steps and learning rate.
"""
from __future__ import annotations

import tiec
import torch
import torch.nn.functional as F

from data import Task

LR = 1e-2


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def _fit(module: torch.nn.Module, loss_fn, steps: int, params=None) -> None:
    torch.manual_seed(0)  # nothing here draws random numbers; fixed all the same
    opt = torch.optim.Adam(list(params if params is not None else module.parameters()), lr=LR)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(module) + module.tie_penalty()
        loss.backward()
        opt.step()


def typing_run(program: tiec.api.Program, model: str, task: Task, seed: int, steps: int) -> dict:
    """Part (a): both classifiers trained together, source on its labels, target on its few.
    Returns target and source test accuracy."""
    module = program.torch(model, seed=seed)

    def loss(m):
        out_s, out_t = m(task.source_x, task.target_x)
        return F.cross_entropy(out_s, task.source_y) + F.cross_entropy(out_t, task.target_y)

    _fit(module, loss, steps)
    with torch.no_grad():
        out_s, out_t = module(task.source_test_x, task.target_test_x)
    return {"target": accuracy(out_t, task.target_test_y), "source": accuracy(out_s, task.source_test_y)}


def autoencoder_run(program: tiec.api.Program, model: str, task: Task, seed: int, steps: int) -> dict:
    """Part (b): the target classifier on its few labels, and (for models with a second input) an
    autoencoder on the unlabelled target images: squared error summed over pixels, averaged over
    images. Returns target test accuracy."""
    module = program.torch(model, seed=seed)
    alone = model == "Alone"

    def loss(m):
        if alone:
            return F.cross_entropy(m(task.target_x), task.target_y)
        logits, recon = m(task.target_x, task.unlabelled_x)
        rec = ((recon - task.unlabelled_x) ** 2).sum(1).mean()
        return F.cross_entropy(logits, task.target_y) + rec

    _fit(module, loss, steps)
    with torch.no_grad():
        out = module(task.target_test_x) if alone else module(task.target_test_x, task.target_test_x)[0]
    return {"target": accuracy(out, task.target_test_y)}


def im2col(module: torch.nn.Module) -> None:
    """Set the locally connected model's patch convolution to one-hot 3×3 filters (channel
    k = 3·row + column picks that pixel of the patch) and freeze it: it gathers, it does not learn."""
    with torch.no_grad():
        w = module.patches.weight
        w.zero_()
        for k in range(9):
            w[k, 0, k // 3, k % 3] = 1.0
    w.requires_grad_(False)


def as_locally_connected(cnn: torch.nn.Module, lc: torch.nn.Module) -> None:
    """Give `lc` the CNN's function: every position's map is the convolution's weight, every
    position's bias its bias, the same head. Both then compute the same outputs."""
    im2col(lc)
    c = cnn.conv.weight.shape[0]
    with torch.no_grad():
        per_position = cnn.conv.weight.reshape(c, 9).T.reshape(1, 9 * c)  # [9, c] row-major, as the spec reads it
        lc.local.weight.copy_(per_position.expand(64, -1))
        lc.local_bias.weight.copy_(cnn.conv.bias.expand(64, -1))
        lc.head.weight.copy_(cnn.head.weight)
        lc.head.bias.copy_(cnn.head.bias)


def conv_run(program: tiec.api.Program, model: str, task: Task, seed: int, steps: int) -> dict:
    """Part (c)'s accuracy: the CNN, or the locally connected model started from that same CNN's
    function (so the two differ only in whether positions keep one weight), trained on the few
    labelled target images. Returns target test accuracy."""
    module = program.torch(model, seed=seed)
    if model != "CNN":
        as_locally_connected(program.torch("CNN", seed=seed), module)
    params = [p for p in module.parameters() if p.requires_grad]
    x, test = task.target_x.reshape(-1, 1, 8, 8), task.target_test_x.reshape(-1, 1, 8, 8)
    _fit(module, lambda m: F.cross_entropy(m(x), task.target_y), steps, params)
    with torch.no_grad():
        return {"target": accuracy(module(test), task.target_test_y)}
