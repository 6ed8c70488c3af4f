"""The four architectures, in PyTorch.

Every model takes raw quantd features ([N, F] for the MLP, [N, T, F] for the windowed ones),
standardises them in float with the training period's mean and scale (raw features span 0.01 to
15 and would not survive one per-tensor INT8 scale), and returns one score per row ([N, 1]): the
predicted forward mid log-return in bps.
"""
from __future__ import annotations

import torch
from torch import nn


class Standardize(nn.Module):
    def __init__(self, mean, scale):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean) * self.scale


class MLP(nn.Module):
    """F -> hidden -> hidden -> 1 with ReLU: Linear(+ReLU) pairs that ONNX Runtime fuses into
    integer QGemm / QLinearMatMul when quantized."""
    window = 1

    def __init__(self, n_features, hidden, mean, scale):
        super().__init__()
        self.norm = Standardize(mean, scale)
        self.fc0 = nn.Linear(n_features, hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)
        self.relu0, self.relu1 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        h = self.relu0(self.fc0(self.norm(x)))
        h = self.relu1(self.fc1(h))
        return self.out(h)


class TCN(nn.Module):
    """A temporal convolution over the last T feature rows: two causal dilated Conv1d(+ReLU)
    layers covering the window, then a Linear on the last time step. Conv and Linear quantize
    fully to INT8 (QLinearConv / QGemm in ONNX Runtime)."""

    def __init__(self, n_features, hidden, window, mean, scale):
        super().__init__()
        self.window = window
        self.norm = Standardize(mean, scale)
        k = 3
        d1 = max(1, (window - 1) // (2 * (k - 1)))
        self.conv0 = nn.Conv1d(n_features, hidden, k, dilation=1)
        self.conv1 = nn.Conv1d(hidden, hidden, k, dilation=d1)
        self.relu0, self.relu1 = nn.ReLU(), nn.ReLU()
        self.pad0, self.pad1 = (k - 1), (k - 1) * d1
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):                       # [N, T, F]
        h = self.norm(x).transpose(1, 2)        # [N, F, T]
        h = self.relu0(self.conv0(nn.functional.pad(h, (self.pad0, 0))))
        h = self.relu1(self.conv1(nn.functional.pad(h, (self.pad1, 0))))
        return self.out(h[:, :, -1])


class LSTMModel(nn.Module):
    """An LSTM over the same window, as the seed article proposes; its recurrence stays float
    (no toolkit quantizes LSTM statically), so this is the dynamic-quantization row."""

    def __init__(self, n_features, hidden, window, mean, scale):
        super().__init__()
        self.window = window
        self.norm = Standardize(mean, scale)
        self.lstm = nn.LSTM(n_features, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):                       # [N, T, F]
        h, _ = self.lstm(self.norm(x))
        return self.out(h[:, -1, :])


class TransformerModel(nn.Module):
    """A small causal Transformer encoder over the last T feature rows, as the seed article names:
    a Linear embedding plus learned positions, `layers` pre-norm blocks (multi-head self-attention
    written as explicit matmuls, a ReLU feed-forward), and a Linear readout of the last token.
    Every matmul quantizes to INT8 (QLinearMatMul / MatMulIntegerToFloat / QGemm in ONNX Runtime);
    layer norms and the softmax stay float."""

    def __init__(self, n_features, width, window, mean, scale, heads=2, layers=2):
        super().__init__()
        assert width % heads == 0
        self.window, self.heads = window, heads
        self.norm = Standardize(mean, scale)
        self.embed = nn.Linear(n_features, width)
        self.pos = nn.Parameter(torch.zeros(1, window, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)
        mask = torch.full((window, window), float("-inf")).triu(1)
        self.register_buffer("mask", mask)

    def forward(self, x):                       # [N, T, F]
        h = self.embed(self.norm(x)) + self.pos
        for b in self.blocks:
            h = b(h, self.mask)
        return self.out(self.ln(h[:, -1, :]))


class Block(nn.Module):
    """Pre-norm: h + attention(norm(h)), then h + feed-forward(norm(h))."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads, self.dim = heads, width // heads
        self.ln0, self.ln1 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.proj = nn.Linear(width, width)
        self.ff0, self.ff1 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.relu = nn.ReLU()

    def split(self, t):                         # [N, T, W] -> [N, H, T, D]
        n, length, _ = t.shape
        return t.reshape(n, length, self.heads, self.dim).transpose(1, 2)

    def forward(self, h, mask):
        a = self.ln0(h)
        q, k, v = self.split(self.q(a)), self.split(self.k(a)), self.split(self.v(a))
        att = torch.matmul(q, k.transpose(-1, -2)) * (self.dim ** -0.5) + mask
        o = torch.matmul(torch.softmax(att, dim=-1), v)              # [N, H, T, D]
        n, _, length, _ = o.shape
        h = h + self.proj(o.transpose(1, 2).reshape(n, length, self.heads * self.dim))
        return h + self.ff1(self.relu(self.ff0(self.ln1(h))))


def build(arch: str, n_features: int, hidden: int, window: int, mean, scale) -> nn.Module:
    if arch == "mlp":
        return MLP(n_features, hidden, mean, scale)
    if arch == "tcn":
        return TCN(n_features, hidden, window, mean, scale)
    if arch == "lstm":
        return LSTMModel(n_features, hidden, window, mean, scale)
    if arch == "transformer":
        return TransformerModel(n_features, hidden, window, mean, scale)
    raise ValueError(arch)
