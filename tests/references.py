"""Hand-written PyTorch models, one per example, written the way a person would.

They are the independent reference: each loads a compiled module's state dict with strict=True,
so state-dict keys, parameter shapes and forward semantics must all agree.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bias(nn.Module):
    """What is left of a layer whose weight is another layer's, transposed: its own bias."""

    def __init__(self, n: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 256), nn.Linear(256, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class TiedAutoencoder(nn.Module):
    def __init__(self, hidden: int = 256):
        super().__init__()
        self.enc, self.dec = nn.Linear(784, hidden), Bias(784)

    def forward(self, x):
        h = F.relu(self.enc(x))
        return torch.sigmoid(F.linear(h, self.enc.weight.t(), self.dec.bias))


class Tower(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, 64)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return self.fc(torch.flatten(h, 1))


class Siamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = Tower()

    def forward(self, left, right):
        return F.cosine_similarity(self.tower(left), self.tower(right), dim=1)


class Residual(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(self.norm(x))))


class Deep(nn.Module):
    def __init__(self, d: int = 128, depth: int = 6, shared: bool = False):
        super().__init__()
        self.shared, self.depth = shared, depth
        self.blk = Residual(d) if shared else nn.ModuleList(Residual(d) for _ in range(depth))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        for i in range(self.depth):
            x = (self.blk if self.shared else self.blk[i])(x)
        return self.head(x)


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 1000, d: int = 64):
        super().__init__()
        self.embed, self.norm = nn.Embedding(vocab, d), nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens):
        return self.lm_head(self.norm(self.embed(tokens)))


class TiedLMExplicit(nn.Module):
    def __init__(self, vocab: int = 1000, d: int = 64):
        super().__init__()
        self.embed, self.norm = nn.Embedding(vocab, d), nn.LayerNorm(d)

    def forward(self, tokens):
        return self.norm(self.embed(tokens)) @ self.embed.weight.T


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.head = nn.Linear(784, 128), nn.Linear(128, 10)

    def forward(self, x):
        return self.head(F.relu(self.enc(x)))


class EncoderLayer(nn.Module):
    """Post-LN transformer encoder layer (BERT/ALBERT)."""

    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.attn_norm = nn.LayerNorm(d, eps=1e-12)
        self.up, self.down = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, x):
        h = self.attn_norm(x + self.attn(x, x, x, need_weights=False)[0])
        return self.ffn_norm(h + self.down(F.gelu(self.up(h))))


class Albert(nn.Module):
    """ALBERT-like when `shared`, BERT-like otherwise; logits tied to the input embedding."""

    def __init__(self, vocab=30000, e=128, d=768, heads=12, ffn=3072, layers=12, max_len=512, shared=True):
        super().__init__()
        self.shared, self.layers = shared, layers
        self.embed, self.pos = nn.Embedding(vocab, e), nn.Embedding(max_len, e)
        self.embed_norm = nn.LayerNorm(e, eps=1e-12)
        self.project = nn.Linear(e, d)
        self.layer = EncoderLayer(d, heads, ffn) if shared else \
            nn.ModuleList(EncoderLayer(d, heads, ffn) for _ in range(layers))
        self.head, self.head_norm = nn.Linear(d, e), nn.LayerNorm(e, eps=1e-12)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        x = self.project(self.embed_norm(self.embed(tokens) + self.pos(positions)))
        for i in range(self.layers):
            x = (self.layer if self.shared else self.layer[i])(x)
        return self.head_norm(F.gelu(self.head(x))) @ self.embed.weight.T


class GPT2Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        t = x.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, vocab=50257, context=1024, d=768, heads=12, layers=12):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.h = nn.ModuleList(GPT2Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens):
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[-1], device=tokens.device))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock, attribute for attribute (torchvision does not import here)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's `ResNet(BasicBlock, layers)` layout: resnet18 is layers=[2, 2, 2, 2], width 64."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes=1000, width=64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
