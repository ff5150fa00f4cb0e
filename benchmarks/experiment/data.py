"""The experiment's data: scikit-learn's bundled 8×8 digits (no download) and distorted copies.

Rule: the 1,797 images are split once, by a fixed permutation, into two disjoint halves. The
first half is the **source** task (original images, 80% to train on, 20% to test). The second
half is the **target** task, every image distorted one of two ways (`DISTORTIONS`):

- `shift`: moved one pixel right and one down (the freed row and column are blank), so a pixel
  of the target means what its upper-left neighbour means in the source;
- `sensor`: the same pixels through a worse camera: blurred by a 3×3 box filter, contrast
  halved onto a grey background (0.5·x + 0.25), so every pixel keeps its meaning.

Both then get fixed Gaussian noise (`NOISE_STD`) and are clipped to [0, 1]. The target's first
`TARGET_TEST` images are its test set; the rest are a pool from which each seed draws
`labels_per_class` labelled images per class; the remainder of the pool is the unlabelled data.
Pixel values are scaled from 0…16 to 0…1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits

SPLIT_SEED = 0  # the split and the noise are the same for every seed
NOISE_STD = 0.1
SHIFT = (1, 1)  # rows down, columns right
DISTORTIONS = {
    "shift": f"shifted {SHIFT[0]} pixel down and {SHIFT[1]} right",
    "sensor": "blurred (3×3 box filter) with contrast halved onto a grey background (0.5·x + 0.25)",
}
TARGET_TEST = 300


@dataclass(frozen=True)
class Task:
    """Tensors of one seed's draw: images [N, 64] in [0, 1], labels [N]."""

    source_x: torch.Tensor
    source_y: torch.Tensor
    source_test_x: torch.Tensor
    source_test_y: torch.Tensor
    target_x: torch.Tensor  # the few labelled target images
    target_y: torch.Tensor
    unlabelled_x: torch.Tensor  # the rest of the target pool, labels unused
    target_test_x: torch.Tensor
    target_test_y: torch.Tensor


def distort(images: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """[N, 64] images in [0, 1] → distorted by `kind` (see the module docstring), noisy, clipped."""
    grid = images.reshape(-1, 8, 8)
    if kind == "shift":
        dy, dx = SHIFT
        out = np.zeros_like(grid)
        out[:, dy:, dx:] = grid[:, :8 - dy, :8 - dx]
    elif kind == "sensor":
        padded = np.pad(grid, ((0, 0), (1, 1), (1, 1)), mode="edge")
        blurred = sum(padded[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)) / 9
        out = 0.5 * blurred + 0.25
    else:
        raise ValueError(f"unknown distortion {kind!r}: expected one of {sorted(DISTORTIONS)}")
    noisy = out + rng.normal(0.0, NOISE_STD, out.shape)
    return np.clip(noisy, 0.0, 1.0).reshape(-1, 64)


class Digits:
    """The fixed split; `task(seed)` draws a seed's labelled target images."""

    def __init__(self, distortion: str = "shift") -> None:
        self.distortion = distortion
        x, y = load_digits(return_X_y=True)
        x = x.astype(np.float64) / 16.0
        rng = np.random.default_rng(SPLIT_SEED)
        order = rng.permutation(len(x))
        half = len(x) // 2
        src, tgt = order[:half], order[half:]
        cut = int(0.8 * len(src))
        self.source = (x[src[:cut]], y[src[:cut]])
        self.source_test = (x[src[cut:]], y[src[cut:]])
        target_x = distort(x[tgt], rng, distortion)
        self.target_test = (target_x[:TARGET_TEST], y[tgt[:TARGET_TEST]])
        self.pool = (target_x[TARGET_TEST:], y[tgt[TARGET_TEST:]])

    def task(self, seed: int, labels_per_class: int) -> Task:
        """The tensors for `seed`: the same split, a fresh draw of labelled target images."""
        rng = np.random.default_rng(1000 + seed)
        pool_x, pool_y = self.pool
        chosen = np.concatenate([rng.choice(np.flatnonzero(pool_y == c), labels_per_class, replace=False)
                                 for c in range(10)])
        rest = np.setdiff1d(np.arange(len(pool_y)), chosen)

        def f(a):
            return torch.as_tensor(a, dtype=torch.float32)

        def i(a):
            return torch.as_tensor(a, dtype=torch.int64)

        return Task(f(self.source[0]), i(self.source[1]), f(self.source_test[0]), i(self.source_test[1]),
                    f(pool_x[chosen]), i(pool_y[chosen]), f(pool_x[rest]),
                    f(self.target_test[0]), i(self.target_test[1]))
