"""A team's production detector in the ASVspoof 2021 baseline's style, written for the gate.

Nothing here imports the harness: this is how a team writes its model. ``AsvDetector``
takes a config dict ``d_args`` and a ``[B, T]`` waveform: a fixed sinc filterbank (129
taps, a buffer), max-pooling, six residual blocks in an ``nn.ModuleDict`` (the shortcut
added in a helper method, a 1x1 projection where channels change), filter-wise scaling
gates (FMS), a 2-layer GRU and ``log_softmax`` over 2 classes (column 1 = bona fide). Each
block pools by 3, so the forward needs 128 + 3**7 = 2,315 samples at the least.

Beside it, the refactors a team might review:
- ``RefactoredDetector``: exactly the same function, renamed and re-nested (front end and
  head modules, stages in an ``nn.ModuleList`` whose parent adds the shortcut first,
  identity held as no module).
- ``RenamedClassDetector``: ``AsvDetector`` with the sinc front end's class renamed (a
  subclass of ``nn.Module`` holding the same buffer, no shared base class).
- ``SlopeBugDetector``: the refactor with one LeakyReLU that lost its 0.3 slope.
- ``UnregisteredNormDetector``: the refactor whose pre-GRU BatchNorm sits in a plain list.
- ``StaleShortcutDetector`` / ``MissingShortcutDetector`` / ``DoubleShortcutDetector``:
  broken residual wirings (the shortcut from the previous block's input; none on a
  shape-changing block; the shortcut added twice).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

D_ARGS = {"filts": [8, [8, 8], [8, 16], [16, 16]], "first_conv": 129, "gru_node": 16, "nb_gru_layer": 2,
          "nb_classes": 2, "sample_rate": 16000}
MIN_SAMPLES = 128 + 3 ** 7


def sinc_filters(out_channels: int, kernel_size: int, sample_rate: int) -> torch.Tensor:
    """Band-pass sinc filters on a mel scale, Hamming-windowed: ``[out, 1, kernel]``."""
    top = 2595 * math.log10(1 + (sample_rate / 2 - 100) / 700)
    mel = torch.linspace(2595 * math.log10(1 + 30 / 700), top, out_channels + 1, dtype=torch.float64)
    hz = 700 * (10 ** (mel / 2595) - 1)
    t = (torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2) / sample_rate
    window = torch.hamming_window(kernel_size, periodic=False, dtype=torch.float64)
    bands = []
    for low, high in zip(hz[:-1], hz[1:], strict=True):
        band = 2 * high * torch.sinc(2 * high * t) - 2 * low * torch.sinc(2 * low * t)
        bands.append(band * window / band.abs().max())
    return torch.stack(bands).unsqueeze(1).float()


class SincConv(nn.Module):
    """A fixed sinc filterbank: a buffer, no parameters."""

    def __init__(self, out_channels: int, kernel_size: int, sample_rate: int) -> None:
        super().__init__()
        self.register_buffer("filters", sinc_filters(out_channels, kernel_size, sample_rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.filters)


class FMS(nn.Module):
    """Filter-wise feature map scaling: x * s + s, s = sigmoid(fc(mean over time))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc(x.mean(dim=-1))).unsqueeze(-1)
        return x * s + s


class ResBlock(nn.Module):
    """BN-LeakyReLU-conv-BN-LeakyReLU-conv; the shortcut is added by the model (``_residual``)."""

    def __init__(self, in_channels: int, out_channels: int, first: bool = False) -> None:
        super().__init__()
        self.first = first
        if not first:
            self.bn1 = nn.BatchNorm1d(in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        self.downsample = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.first else F.leaky_relu(self.bn1(x), 0.3)
        out = self.conv1(out)
        out = F.leaky_relu(self.bn2(out), 0.3)
        return self.conv2(out)


class AsvDetector(nn.Module):
    """The production model: ``[B, T]`` waveform -> ``[B, 2]`` log-probabilities (column 1 = bona fide)."""

    def __init__(self, d_args: dict | None = None) -> None:
        super().__init__()
        d = {**D_ARGS, **(d_args or {})}
        f = d["filts"]
        self.sinc = SincConv(f[0], d["first_conv"], d["sample_rate"])
        self.first_bn = nn.BatchNorm1d(f[0])
        widths = [(f[0], f[1][1], True), (f[1][1], f[1][1], False), (f[1][1], f[2][1], False),
                  (f[2][1], f[2][1], False), (f[2][1], f[3][1], False), (f[3][1], f[3][1], False)]
        self.blocks = nn.ModuleDict({f"block{i}": ResBlock(a, b, first)
                                     for i, (a, b, first) in enumerate(widths)})
        self.fms = nn.ModuleDict({f"block{i}": FMS(b) for i, (_, b, _) in enumerate(widths)})
        self.bn_before_gru = nn.BatchNorm1d(f[3][1])
        self.gru = nn.GRU(f[3][1], d["gru_node"], num_layers=d["nb_gru_layer"], batch_first=True)
        self.fc = nn.Linear(d["gru_node"], d["nb_classes"])

    def _residual(self, name: str, x: torch.Tensor) -> torch.Tensor:
        block = self.blocks[name]
        identity = x if block.downsample is None else block.downsample(x)
        out = block(x) + identity
        return self.fms[name](F.max_pool1d(out, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sinc(x.unsqueeze(1))
        x = F.leaky_relu(self.first_bn(torch.abs(F.max_pool1d(x, 3))), 0.3)
        for name in self.blocks:
            x = self._residual(name, x)
        x = F.leaky_relu(self.bn_before_gru(x), 0.3)
        x, _ = self.gru(x.transpose(1, 2))
        return F.log_softmax(self.fc(x[:, -1, :]), dim=1)


# --- a correct refactor: other names, other nesting, the same function --------------------------


class Stage(nn.Module):
    """One residual stage: the parent adds ``proj(x)`` (or x) to ``body(x)``."""

    def __init__(self, in_channels: int, out_channels: int, first: bool, slope: float = 0.3) -> None:
        super().__init__()
        self.slope = slope
        self.pre_norm = None if first else nn.BatchNorm1d(in_channels)
        self.conv_a = nn.Conv1d(in_channels, out_channels, 3, padding=1)
        self.norm_b = nn.BatchNorm1d(out_channels)
        self.conv_b = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        self.proj = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.gate = FMS(out_channels)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.pre_norm is None else F.leaky_relu(self.pre_norm(x), 0.3)
        h = F.leaky_relu(self.norm_b(self.conv_a(h)), self.slope)
        return self.conv_b(h)


class FrontEnd(nn.Module):
    def __init__(self, filters: int, taps: int, sample_rate: int) -> None:
        super().__init__()
        self.filterbank = SincConv(filters, taps, sample_rate)
        self.norm = nn.BatchNorm1d(filters)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        h = F.max_pool1d(self.filterbank(wave.unsqueeze(1)), 3)
        return F.leaky_relu(self.norm(torch.abs(h)), 0.3)


class RefactoredDetector(nn.Module):
    """``AsvDetector``'s function with other names and nesting; the parent adds each shortcut."""

    def __init__(self, d_args: dict | None = None, *, slopes: tuple[float, ...] = (0.3,) * 6) -> None:
        super().__init__()
        d = {**D_ARGS, **(d_args or {})}
        f = d["filts"]
        self.front = FrontEnd(f[0], d["first_conv"], d["sample_rate"])
        widths = [(f[0], f[1][1]), (f[1][1], f[1][1]), (f[1][1], f[2][1]), (f[2][1], f[2][1]),
                  (f[2][1], f[3][1]), (f[3][1], f[3][1])]
        self.stages = nn.ModuleList(Stage(a, b, i == 0, slopes[i]) for i, (a, b) in enumerate(widths))
        self.head = nn.ModuleDict({"norm": nn.BatchNorm1d(f[3][1]),
                                   "rnn": nn.GRU(f[3][1], d["gru_node"], num_layers=d["nb_gru_layer"],
                                                 batch_first=True),
                                   "out": nn.Linear(d["gru_node"], d["nb_classes"])})

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        h = self.front(wave)
        for stage in self.stages:
            shortcut = h if stage.proj is None else stage.proj(h)
            h = stage.gate(F.max_pool1d(shortcut + stage.body(h), 3))
        h = F.leaky_relu(self.head["norm"](h), 0.3)
        h, _ = self.head["rnn"](h.transpose(1, 2))
        return F.log_softmax(self.head["out"](h[:, -1, :]), dim=1)


class SincFilterbank(nn.Module):
    """``SincConv`` under another class name: the same buffer, the same forward."""

    def __init__(self, out_channels: int, kernel_size: int, sample_rate: int) -> None:
        super().__init__()
        self.register_buffer("filters", sinc_filters(out_channels, kernel_size, sample_rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.filters)


class RenamedClassDetector(AsvDetector):
    """``AsvDetector`` with its front end's class renamed."""

    def __init__(self, d_args: dict | None = None) -> None:
        super().__init__(d_args)
        d = {**D_ARGS, **(d_args or {})}
        self.sinc = SincFilterbank(d["filts"][0], d["first_conv"], d["sample_rate"])


# --- broken refactors ------------------------------------------------------------------------------


class SlopeBugDetector(RefactoredDetector):
    """The refactor with stage 3's LeakyReLU at the default slope 0.01 instead of 0.3."""

    def __init__(self, d_args: dict | None = None) -> None:
        super().__init__(d_args, slopes=(0.3, 0.3, 0.3, 0.01, 0.3, 0.3))


class UnregisteredNormDetector(RefactoredDetector):
    """The refactor with the pre-GRU BatchNorm in a plain list: not registered, not saved, not moved."""

    def __init__(self, d_args: dict | None = None) -> None:
        super().__init__(d_args)
        self.pre_rnn = [self.head.pop("norm")]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        h = self.front(wave)
        for stage in self.stages:
            shortcut = h if stage.proj is None else stage.proj(h)
            h = stage.gate(F.max_pool1d(shortcut + stage.body(h), 3))
        h = F.leaky_relu(self.pre_rnn[0](h), 0.3)
        h, _ = self.head["rnn"](h.transpose(1, 2))
        return F.log_softmax(self.head["out"](h[:, -1, :]), dim=1)


class StaleShortcutDetector(AsvDetector):
    """Block 4 adds a shortcut made from block 3's input (pooled to fit), not from its own input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sinc(x.unsqueeze(1))
        x = F.leaky_relu(self.first_bn(torch.abs(F.max_pool1d(x, 3))), 0.3)
        previous = x
        for name in self.blocks:
            block = self.blocks[name]
            identity = F.max_pool1d(previous, 3) if name == "block4" else (
                x if block.downsample is None else block.downsample(x))
            previous = x
            x = self.fms[name](F.max_pool1d(block(x) + identity, 3))
        x = F.leaky_relu(self.bn_before_gru(x), 0.3)
        x, _ = self.gru(x.transpose(1, 2))
        return F.log_softmax(self.fc(x[:, -1, :]), dim=1)


class MissingShortcutDetector(AsvDetector):
    """Block 2 changes channels and adds no shortcut at all."""

    def _residual(self, name: str, x: torch.Tensor) -> torch.Tensor:
        block = self.blocks[name]
        if name == "block2":
            return self.fms[name](F.max_pool1d(block(x), 3))
        return super()._residual(name, x)


class DoubleShortcutDetector(AsvDetector):
    """Block 4 adds its shortcut twice."""

    def _residual(self, name: str, x: torch.Tensor) -> torch.Tensor:
        block = self.blocks[name]
        if name == "block4":
            identity = x if block.downsample is None else block.downsample(x)
            return self.fms[name](F.max_pool1d(block(x) + identity + identity, 3))
        return super()._residual(name, x)
