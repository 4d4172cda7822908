"""Plain ``torch.nn`` building blocks of IBNet: the architecture.

Activations are ``(B, C, T)`` tensors travelling with a ``(B, 1, T)`` float mask that is 1 on valid frames and
0 on padding (``None`` when no utterance is padded). Every convolution that mixes time steps (kernel > 1) sees
its input multiplied by the mask first, so whatever the padding holds never reaches a valid frame: a padded
batch gives the same outputs as its utterances run alone. Point-wise convolutions and BatchNorm act on each
frame alone and need no mask. Each block tells how many valid frames it leaves (``output_lengths``).

Every convolution is a :class:`~ibnet_nemo.parts.conv_bn.ConvBN`, which decides how it is computed (the CPU and
GPU fast paths, folded BatchNorm, the ``fast=False`` reference); nothing here depends on that choice.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ibnet_nemo.parts.conv_bn import ConvBN, activate

__all__ = ["ACTIVATIONS", "ConvBNAct", "InvertedBottleneck", "IBBlock", "make_mask"]

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "gelu": nn.GELU}


def make_mask(lengths: torch.Tensor, max_length: int, dtype: torch.dtype) -> torch.Tensor:
    """`(B, 1, T)` mask of ones on the first ``lengths[b]`` frames and zeros on the rest."""
    steps = torch.arange(max_length, device=lengths.device)
    return (steps[None, :] < lengths[:, None]).unsqueeze(1).to(dtype)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_common(kernel_size: int, stride: int, dilation: int, dropout: float, activation: str) -> None:
    _check_positive("kernel_size", kernel_size)
    _check_positive("stride", stride)
    _check_positive("dilation", dilation)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd so that padding keeps frames centred, got {kernel_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")


class ConvBNAct(nn.Module):
    """Full 1-D convolution, BatchNorm and activation: IBNet's C1 (k=33, stride 2) and C3 (k=1).

    ``in_channels``, ``out_channels``, ``kernel_size``, ``stride``, ``dilation`` and ``fast`` are those of the
    :class:`~ibnet_nemo.parts.conv_bn.ConvBN` it wraps.

    Args:
        dropout: dropout after the activation (Default: ``0.0``).
        activation: key of :data:`ACTIVATIONS` (Default: ``"relu"``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        dropout: float = 0.0,
        activation: str = "relu",
        fast: bool = True,
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_common(kernel_size, stride, dilation, dropout, activation)
        self.stride, self.mixes_time = stride, kernel_size > 1
        self.conv = ConvBN(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, fast=fast)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """`(B,)` valid output frames for `(B,)` valid input frames: ``ceil(L / stride)``."""
        return self.conv.output_lengths(lengths)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """`(B, C_in, T)` and its `(B, 1, T)` mask (``None``: no padding) to `(B, C_out, ceil(T / stride))`."""
        if self.mixes_time and mask is not None:
            x = x * mask
        return self.drop(activate(self.act, self.conv(x)))


class InvertedBottleneck(nn.Module):
    """IBConv: MobileNetV2's inverted residual in 1-D.

    Point-wise expansion to ``in_channels * expansion`` channels, depth-wise convolution over time, then a
    point-wise *linear* projection (BatchNorm, no activation: in the narrow space an activation would discard
    about half of the signal). The input is added to the output when ``has_skip``: same width and stride 1.

    Args:
        in_channels: input channels `C_in`.
        out_channels: output channels `C_out`.
        kernel_size: odd depth-wise kernel width.
        expansion: width multiplier `t` of the hidden layer (Default: ``2``).
        stride: depth-wise time stride (Default: ``1``).
        dilation: depth-wise dilation (Default: ``1``).
        dropout: dropout on the projection, before the skip is added (Default: ``0.0``).
        activation: key of :data:`ACTIVATIONS` (Default: ``"relu"``).
        fast: see :class:`~ibnet_nemo.parts.conv_bn.ConvBN` (Default: ``True``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        expansion: int = 2,
        stride: int = 1,
        dilation: int = 1,
        dropout: float = 0.0,
        activation: str = "relu",
        fast: bool = True,
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_positive("expansion", expansion)
        _check_common(kernel_size, stride, dilation, dropout, activation)
        mid_channels = in_channels * expansion
        self.stride = stride
        self.has_skip = in_channels == out_channels and stride == 1

        self.conv_pw = ConvBN(in_channels, mid_channels, 1, fast=fast)
        self.conv_dw = ConvBN(
            mid_channels, mid_channels, kernel_size, stride=stride, dilation=dilation, groups=mid_channels, fast=fast
        )
        self.conv_pwl = ConvBN(mid_channels, out_channels, 1, fast=fast)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """`(B,)` valid output frames for `(B,)` valid input frames: ``ceil(L / stride)``."""
        return self.conv_dw.output_lengths(lengths)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """`(B, C_in, T)` and its `(B, 1, T)` mask (``None``: no padding) to `(B, C_out, ceil(T / stride))`."""
        shortcut = x
        # point-wise expansion
        x = activate(self.act, self.conv_pw(x))
        # depth-wise
        x = activate(self.act, self.conv_dw(x if mask is None else x * mask))
        # point-wise linear projection
        x = self.drop(self.conv_pwl(x))
        if self.has_skip:
            x = x + shortcut
        return x


class IBBlock(nn.Module):
    """``repeat`` inverted bottlenecks in a row plus a block residual: the "dual residual" of IBNet.

    The first module makes the channel change (and the time stride, in its depth-wise convolution), the other
    ``repeat - 1`` run at ``out_channels`` with their own skips. A 1x1 convolution + BatchNorm (with the same
    stride, so both paths keep the same frames) carries the block input to the block output, giving every block
    two gradient paths. The sum stays linear, as in MobileNetV2. With ``repeat=1, residual=False`` the block is
    a single IBConv (IBNet's C2).

    Args:
        in_channels: input channels `C_in`.
        out_channels: output channels `C_out`.
        kernel_size: odd depth-wise kernel width.
        repeat: number of inverted bottlenecks `R` (Default: ``3``).
        expansion: width multiplier `t` (Default: ``2``).
        stride: time stride of the first module's depth-wise convolution and of the block residual
            (Default: ``1``).
        dilation: depth-wise dilation (Default: ``1``).
        dropout: dropout in each module (Default: ``0.0``).
        activation: key of :data:`ACTIVATIONS` (Default: ``"relu"``).
        residual: add the 1x1 block residual (Default: ``True``).
        fast: see :class:`~ibnet_nemo.parts.conv_bn.ConvBN` (Default: ``True``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        repeat: int = 3,
        expansion: int = 2,
        stride: int = 1,
        dilation: int = 1,
        dropout: float = 0.0,
        activation: str = "relu",
        residual: bool = True,
        fast: bool = True,
    ) -> None:
        super().__init__()
        _check_positive("repeat", repeat)
        self.stride = stride
        self.layers = nn.ModuleList(
            InvertedBottleneck(
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size,
                expansion=expansion,
                stride=stride if i == 0 else 1,
                dilation=dilation,
                dropout=dropout,
                activation=activation,
                fast=fast,
            )
            for i in range(repeat)
        )
        self.conv_res = ConvBN(in_channels, out_channels, 1, stride=stride, fast=fast) if residual else None

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """`(B,)` valid output frames for `(B,)` valid input frames."""
        for layer in self.layers:
            lengths = layer.output_lengths(lengths)
        return lengths

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """`(B, C_in, T)` and its `(B, 1, T)` mask (``None``: no padding) to `(B, C_out, ceil(T / stride))`."""
        shortcut = x
        x = self.layers[0](x, mask)
        if mask is not None and self.stride > 1:
            # the frames the first module kept: output frame t is input frame stride * t
            mask = mask[:, :, :: self.stride]
        for layer in self.layers[1:]:
            x = layer(x, mask)
        if self.conv_res is not None:
            x = x + self.conv_res(shortcut)
        return x
