"""The execution engine of IBNet's convolutions: :class:`ConvBN` and the helpers its fast path needs.

Every convolution in IBNet is a bias-free ``nn.Conv1d`` with "same" padding followed by ``nn.BatchNorm1d``.
:class:`ConvBN` holds exactly these two modules (so checkpoints name ``conv.weight``, ``bn.running_mean`` ...)
and chooses how to compute them:

- CPU fast path: activations stay time-major in memory (`(B, C, T)` shape, `(B, T, C)` storage). There a
  point-wise convolution is one matrix product and a depth-wise one is PyTorch's channels-last ``conv2d``,
  about 25x faster on CPU than ``conv1d`` for IBNet's long kernels. In training, a depth-wise convolution
  (stride 1, no dilation) has a backward of its own (:class:`_DepthwiseConv`), 2-3x faster than PyTorch's under
  bf16 autocast.
- GPU fast path: cuDNN's own convolutions.
- On both, in eval mode BatchNorm is folded into the convolution's weights (cached while no parameter or running
  statistic changes).
- ``fast=False``: plain ``nn.Conv1d`` + ``nn.BatchNorm1d``, the reference the tests hold the fast path to.

:func:`activate` applies an activation in place where autograd allows it; :func:`capturing_graph` tells the
engine when it must not cache or take data-dependent shortcuts (tracing, scripting, export).
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBN", "activate", "capturing_graph", "conv_output_lengths", "fold_batchnorm", "same_padding"]

_IN_PLACE = {
    nn.ReLU: torch.relu_,
    nn.ReLU6: partial(F.hardtanh_, min_val=0.0, max_val=6.0),
    nn.SiLU: partial(F.silu, inplace=True),
}


def same_padding(kernel_size: int, dilation: int) -> int:
    """Padding on each side that keeps frames centred: ``dilation * (kernel_size - 1) // 2`` (odd kernels)."""
    return dilation * (kernel_size - 1) // 2


def conv_output_lengths(lengths: torch.Tensor, kernel_size: int, stride: int, dilation: int) -> torch.Tensor:
    """Frames a :func:`same_padding` convolution leaves of each utterance: ``ceil(L / stride)`` for odd kernels.

    Args:
        lengths: `(B,)` valid input frames.
    Returns:
        `(B,)` valid output frames, same dtype.
    """
    padding = same_padding(kernel_size, dilation)
    return torch.div(lengths + 2 * padding - dilation * (kernel_size - 1) - 1, stride, rounding_mode="floor") + 1


def fold_batchnorm(
    weight: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.BatchNorm1d
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight `(C_out, ...)` and bias `(C_out,)` of a layer followed by the eval-mode ``bn``, ``bn`` folded in
    (``bias`` None: the layer has none)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    weight = weight * scale.view((-1,) + (1,) * (weight.dim() - 1))
    return weight, shift if bias is None else bias * scale + shift


def capturing_graph() -> bool:
    """Whether the code runs under tracing, scripting or compilation (as in export): the graph must then hold
    the general computation, with no Python-side cache and no shortcut chosen from the data."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def activate(activation: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``activation(x)``, overwriting ``x`` (always a fresh convolution output) when autograd records nothing.

    In place saves an allocation and a pass over the widest tensors in inference. Under autograd the
    activation stays out of place: in place on the time-major view, backward would rebuild the whole tensor.
    """
    in_place = _IN_PLACE.get(type(activation))
    if in_place is None or (torch.is_grad_enabled() and x.requires_grad):
        return activation(x)
    return in_place(x)


def _is_plain_depthwise(conv: nn.Conv1d) -> bool:
    """A depth-wise convolution with stride 1 and no dilation: the case :class:`_DepthwiseConv` computes."""
    return conv.groups == conv.in_channels == conv.out_channels and conv.stride[0] == 1 and conv.dilation[0] == 1


class _DepthwiseConv(torch.autograd.Function):
    """Depth-wise "same" convolution of channels-last `(B, C, 1, T)` activations with a `(C, 1, 1, k)` kernel, with
    a backward that is 2-3x faster on the CPU than PyTorch's own (under bf16 autocast; about the same in fp32).

    The input gradient is the forward convolution with the kernel reversed. The weight gradient, for channel `c` and
    tap `j` the sum over `b, t` of `grad[b, c, t] * x_padded[b, c, t + j]`, is one grouped convolution in which
    each of the `B * C` rows is a group and its gradient row the kernel.
    """

    @staticmethod
    def forward(ctx, x4: torch.Tensor, weight4: torch.Tensor, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x4, weight4)
        ctx.padding = padding
        return F.conv2d(x4, weight4, padding=(0, padding), groups=weight4.shape[0])

    @staticmethod
    def backward(ctx, grad4: torch.Tensor):
        x4, weight4 = ctx.saved_tensors
        padding, channels = ctx.padding, weight4.shape[0]
        grad4 = grad4.contiguous(memory_format=torch.channels_last)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad4, weight4.flip(-1), padding=(0, padding), groups=channels)
        if ctx.needs_input_grad[1]:
            batch, _, _, frames = x4.shape
            rows = F.pad(x4.squeeze(2), (padding, padding)).reshape(1, batch * channels, frames + 2 * padding)
            kernels = grad4.squeeze(2).reshape(batch * channels, 1, frames)
            grad_weight = F.conv1d(rows, kernels, groups=batch * channels).view(batch, channels, 1, 1, -1).sum(0)
        return grad_x, grad_weight, None


def _depthwise_conv(x4: torch.Tensor, weight4: torch.Tensor, padding: int) -> torch.Tensor:
    """:class:`_DepthwiseConv` in the dtype autocast would give ``F.conv2d`` (the casts stay on the autograd
    graph, so the fp32 weight receives its gradient)."""
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        x4, weight4 = x4.to(dtype), weight4.to(dtype)
    with torch.autocast("cpu", enabled=False):
        return _DepthwiseConv.apply(x4, weight4, padding)


class ConvBN(nn.Module):
    """Bias-free ``nn.Conv1d`` followed by ``nn.BatchNorm1d``, "same" padding (see the module doc for the paths).

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
        *,
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
            padding=same_padding(kernel_size, dilation),
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

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """`(B,)` valid output frames for `(B,)` valid input frames."""
        conv = self.conv
        return conv_output_lengths(lengths, conv.kernel_size[0], conv.stride[0], conv.dilation[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, C_in, T)` to `(B, C_out, ceil(T / stride))`; the CPU fast path returns time-major storage."""
        on_cpu = x.device.type == "cpu"
        if not self.fast or (self.training and not on_cpu):
            return self.bn(self.conv(x))
        weight, bias = self.folded_weight() if not self.training else (self.conv.weight, None)
        conv = self.conv
        if not on_cpu:
            # A GPU's own convolutions are fast (and follow cuDNN's TF32 setting, as NeMo's convolutions do): there
            # only the folded BatchNorm is kept.
            return F.conv1d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if conv.kernel_size[0] == 1 and conv.groups == 1:
            # a strided 1x1 convolution reads every stride-th frame
            y = F.linear(x[:, :, :: conv.stride[0]].transpose(1, 2), weight.squeeze(2), bias)  # (B, T, C_out)
        else:
            # (B, C, 1, T) in channels-last memory is exactly the time-major (B, T, C) storage: no copy.
            x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
            if self.training and torch.is_grad_enabled() and _is_plain_depthwise(conv) and not capturing_graph():
                y4 = _depthwise_conv(x4, weight.unsqueeze(2), conv.padding[0])
            else:
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

    def folded_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
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
        weight, bias = fold_batchnorm(self.conv.weight, None, bn)
        self._folded = (key, weight, bias) if use_cache else None
        return weight, bias
