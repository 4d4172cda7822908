"""Plain ``torch.nn`` building blocks of IBNet.

Activations are ``(B, C, T)`` tensors travelling with a ``(B, 1, T)`` float mask that is 1 on valid frames and
0 on padding (``None`` when no utterance is padded). Every convolution that mixes time steps (kernel > 1) sees
its input multiplied by the mask first, so whatever the padding holds never reaches a valid frame: a padded
batch gives the same outputs as its utterances run alone. Point-wise convolutions and BatchNorm act on each
frame alone and need no mask.

Speed: every convolution is a :class:`ConvBN`, whose fast path keeps activations time-major in memory on the
CPU (`(B, C, T)` shape, `(B, T, C)` storage). There a point-wise convolution is one matrix product and a
depth-wise one is PyTorch's channels-last ``conv2d``, about 25x faster on CPU than ``conv1d`` for IBNet's
long kernels. In eval mode BatchNorm is folded into the convolution's weights (cached while no parameter or
running statistic changes), on the CPU and on a GPU, where the convolutions stay cuDNN's. ``fast=False``
computes the same thing with plain ``nn.Conv1d`` + ``nn.BatchNorm1d``: the reference the tests hold the fast
path to.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "ConvBN",
    "ConvBNAct",
    "InvertedBottleneck",
    "IBBlock",
    "capturing_graph",
    "conv_output_lengths",
    "make_mask",
]

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "gelu": nn.GELU}
_IN_PLACE = {
    nn.ReLU: torch.relu_,
    nn.ReLU6: partial(F.hardtanh_, min_val=0.0, max_val=6.0),
    nn.SiLU: partial(F.silu, inplace=True),
}


def conv_output_lengths(lengths: torch.Tensor, kernel_size: int, stride: int, dilation: int) -> torch.Tensor:
    """Frames a "same"-padded convolution leaves of each utterance.

    With padding ``dilation * (kernel_size - 1) // 2`` (odd effective kernels), this is ``ceil(L / stride)``.

    Args:
        lengths: `(B,)` valid input frames.
    Returns:
        `(B,)` valid output frames, same dtype.
    """
    padding = dilation * (kernel_size - 1) // 2
    return torch.div(lengths + 2 * padding - dilation * (kernel_size - 1) - 1, stride, rounding_mode="floor") + 1


def capturing_graph() -> bool:
    """Whether the code runs under tracing, scripting or compilation (as in export): the graph must then hold
    the general computation, with no Python-side cache and no shortcut chosen from the data."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def make_mask(lengths: torch.Tensor, max_length: int, dtype: torch.dtype) -> torch.Tensor:
    """`(B, 1, T)` mask of ones on the first ``lengths[b]`` frames and zeros on the rest."""
    steps = torch.arange(max_length, device=lengths.device)
    return (steps[None, :] < lengths[:, None]).unsqueeze(1).to(dtype)


def _activate(activation: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``activation(x)``, overwriting ``x`` (always a fresh convolution output) when autograd records nothing.

    In place saves an allocation and a pass over the widest tensors in inference. Under autograd the
    activation stays out of place: in place on the time-major view, backward would rebuild the whole tensor.
    """
    in_place = _IN_PLACE.get(type(activation))
    if in_place is None or (torch.is_grad_enabled() and x.requires_grad):
        return activation(x)
    return in_place(x)


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


class ConvBN(nn.Module):
    """Bias-free ``nn.Conv1d`` followed by ``nn.BatchNorm1d``, "same" padding.

    Args:
        in_channels: input channels `C_in`.
        out_channels: output channels `C_out`.
        kernel_size: odd kernel width.
        stride: time stride (Default: ``1``).
        dilation: kernel dilation (Default: ``1``).
        groups: ``1`` for a full convolution, ``in_channels`` for a depth-wise one (Default: ``1``).
        fast: on the CPU, compute with the time-major fast path; on a GPU, fold BatchNorm into the convolution in
            eval mode; ``False`` runs the modules as they are everywhere (Default: ``True``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        fast: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm1d(out_channels)
        self.fast = fast
        self._folded: Optional[tuple[tuple, torch.Tensor, torch.Tensor]] = None  # (tensor versions, weight, bias)

    def train(self, mode: bool = True) -> "ConvBN":
        """Switch train / eval mode; drops the folded weights, which an optimizer may have made stale."""
        self._folded = None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, C_in, T)` to `(B, C_out, ceil(T / stride))`; the CPU fast path returns time-major storage."""
        on_cpu = x.device.type == "cpu"
        if not self.fast or (self.training and not on_cpu):
            return self.bn(self.conv(x))
        weight, bias = self._folded_weight() if not self.training else (self.conv.weight, None)
        conv = self.conv
        if not on_cpu:
            # A GPU's own convolutions are fast (and follow cuDNN's TF32 setting, as NeMo's convolutions do): there
            # only the folded BatchNorm is kept.
            return F.conv1d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if conv.kernel_size[0] == 1 and conv.stride[0] == 1 and conv.groups == 1:
            y = F.linear(x.transpose(1, 2), weight.squeeze(2), bias)  # (B, T, C_out)
        else:
            # (B, C, 1, T) in channels-last memory is exactly the time-major (B, T, C) storage: no copy.
            x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
            y4 = F.conv2d(
                x4,
                weight.unsqueeze(2),
                bias,
                stride=(1, conv.stride[0]),
                padding=(0, conv.padding[0]),
                dilation=(1, conv.dilation[0]),
                groups=conv.groups,
            )
            y = y4.squeeze(2).transpose(1, 2).contiguous()  # (B, T, C_out): a no-op for channels-last output
        if self.training:
            # BatchNorm1d over (B * T, C) rows computes the same statistics as over (B, C, T).
            y = self.bn(y.reshape(-1, y.shape[-1])).view_as(y)
        return y.transpose(1, 2)

    def _folded_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolution weight and bias with the eval-mode BatchNorm folded in.

        Without autograd the result is kept and reused until a parameter or running statistic is replaced or
        updated in place through autograd-visible ops (``load_state_dict``, ``.to()``, optimizers under
        ``no_grad``), or the module changes mode. A forward with autograd on (eval-mode fine-tuning), tracing
        and export always fold afresh, so gradients reach the parameters and traces hold no stale constants.
        """
        bn = self.bn
        tensors = (self.conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        use_cache = not (torch.is_grad_enabled() or capturing_graph())
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        if use_cache and self._folded is not None and self._folded[0] == key:
            return self._folded[1], self._folded[2]
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight, bias = self.conv.weight * scale[:, None, None], bn.bias - bn.running_mean * scale
        self._folded = (key, weight, bias) if use_cache else None
        return weight, bias


class ConvBNAct(nn.Module):
    """Full 1-D convolution, BatchNorm and activation: IBNet's C1 (k=33, stride 2) and C3 (k=1).

    Args:
        in_channels: input channels `C_in`.
        out_channels: output channels `C_out`.
        kernel_size: odd kernel width.
        stride: time stride (Default: ``1``).
        dilation: kernel dilation (Default: ``1``).
        dropout: dropout after the activation (Default: ``0.0``).
        activation: key of :data:`ACTIVATIONS` (Default: ``"relu"``).
        fast: see :class:`ConvBN` (Default: ``True``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
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
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.conv = ConvBN(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, fast=fast)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """`(B, C_in, T)` and its `(B, 1, T)` mask (``None``: no padding) to `(B, C_out, ceil(T / stride))`."""
        if self.kernel_size > 1 and mask is not None:
            x = x * mask
        return self.drop(_activate(self.act, self.conv(x)))


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
        fast: see :class:`ConvBN` (Default: ``True``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
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
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.has_skip = in_channels == out_channels and stride == 1

        self.conv_pw = ConvBN(in_channels, mid_channels, 1, fast=fast)
        self.conv_dw = ConvBN(
            mid_channels, mid_channels, kernel_size, stride=stride, dilation=dilation, groups=mid_channels, fast=fast
        )
        self.conv_pwl = ConvBN(mid_channels, out_channels, 1, fast=fast)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """`(B, C_in, T)` and its `(B, 1, T)` mask (``None``: no padding) to `(B, C_out, ceil(T / stride))`."""
        shortcut = x
        # point-wise expansion
        x = _activate(self.act, self.conv_pw(x))
        # depth-wise
        x = _activate(self.act, self.conv_dw(x if mask is None else x * mask))
        # point-wise linear projection
        x = self.drop(self.conv_pwl(x))
        if self.has_skip:
            x = x + shortcut
        return x


class IBBlock(nn.Module):
    """``repeat`` inverted bottlenecks in a row plus a block residual: the "dual residual" of IBNet.

    The first module makes the channel change, the other ``repeat - 1`` run at ``out_channels`` with their
    own skips. A 1x1 convolution + BatchNorm carries the block input to the block output, giving every block
    two gradient paths. The sum stays linear, as in MobileNetV2. With ``repeat=1, residual=False`` the block is
    a single IBConv (IBNet's C2).

    Args:
        in_channels: input channels `C_in`.
        out_channels: output channels `C_out`.
        kernel_size: odd depth-wise kernel width.
        repeat: number of inverted bottlenecks `R` (Default: ``3``).
        expansion: width multiplier `t` (Default: ``2``).
        dilation: depth-wise dilation (Default: ``1``).
        dropout: dropout in each module (Default: ``0.0``).
        activation: key of :data:`ACTIVATIONS` (Default: ``"relu"``).
        residual: add the 1x1 block residual (Default: ``True``).
        fast: see :class:`ConvBN` (Default: ``True``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        repeat: int = 3,
        expansion: int = 2,
        dilation: int = 1,
        dropout: float = 0.0,
        activation: str = "relu",
        residual: bool = True,
        fast: bool = True,
    ) -> None:
        super().__init__()
        _check_positive("repeat", repeat)
        self.kernel_size, self.stride, self.dilation = kernel_size, 1, dilation
        self.layers = nn.ModuleList(
            InvertedBottleneck(
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size,
                expansion=expansion,
                dilation=dilation,
                dropout=dropout,
                activation=activation,
                fast=fast,
            )
            for i in range(repeat)
        )
        self.conv_res = ConvBN(in_channels, out_channels, 1, fast=fast) if residual else None

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """`(B, C_in, T)` and its `(B, 1, T)` mask (``None``: no padding) to `(B, C_out, T)`."""
        shortcut = x
        for layer in self.layers:
            x = layer(x, mask)
        if self.conv_res is not None:
            x = x + self.conv_res(shortcut)
        return x
