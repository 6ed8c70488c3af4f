"""The three architectures, in PyTorch.

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


def build(arch: str, n_features: int, hidden: int, window: int, mean, scale) -> nn.Module:
    if arch == "mlp":
        return MLP(n_features, hidden, mean, scale)
    if arch == "tcn":
        return TCN(n_features, hidden, window, mean, scale)
    if arch == "lstm":
        return LSTMModel(n_features, hidden, window, mean, scale)
    raise ValueError(arch)
