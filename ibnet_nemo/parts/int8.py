"""int8 inference on the CPU: oneDNN's int8 matrix products and convolutions (``torch.ops.onednn``, the kernels
PyTorch's own x86 int8 path uses, on plain ``uint8`` / ``int8`` tensors).

Weights are int8 with one scale per output channel, BatchNorm folded in, quantized once. Activations:

- **Between blocks** (the fp32 residual stream and the encoder input) they are quantized to uint8 on the range
  of the batch's valid frames (dynamic, asymmetric): padding frames are zeroed first, so whatever the padding
  holds cannot change a valid frame's result (and neither can the padding's length). An utterance's neighbours in
  a batch can: their frames share the range, which moves its result within the quantization's own error.
- **Inside an inverted bottleneck** the expanded and the depth-wise activations stay uint8 from one operation to
  the next, on a fixed range per channel taken from the BatchNorm that produced them (its mean plus
  :data:`RANGE_SIGMAS` standard deviations). Every channel is rescaled to that range first, which is exact: ReLU
  and the depth-wise convolution act on each channel alone, so a factor taken out of one layer's output channel
  and put into the next layer's input channel cancels.

Activations travel as time-major frames `(B, T, C)`. Matrix products and convolutions accumulate in int32 and add
the fp32 bias, the ReLU and, in the projection, the skip connection in the same call. Only ReLU networks are
supported (the shipped IBNet configs): the rescaling needs an activation that commutes with positive factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from ibnet_nemo.parts.blocks import ConvBNAct, IBBlock, InvertedBottleneck, make_mask
from ibnet_nemo.parts.conv_bn import ConvBN

__all__ = [
    "RANGE_SIGMAS",
    "Int8Conv",
    "Int8ConvBNAct",
    "Int8Encoder",
    "Int8IBBlock",
    "Int8InvertedBottleneck",
    "Int8Linear",
    "QuantizedFrames",
    "check_int8_available",
    "frame_mask",
    "quantize_frames",
    "quantize_weight",
]

#: The fixed uint8 range of a channel inside an inverted bottleneck: its BatchNorm output's mean plus this many
#: standard deviations (the running statistics of training). Chosen with a demo IBNet on its validation set
#: (8 to 24 tried).
RANGE_SIGMAS = 16.0
# Steps of a dynamic range: 254, not 255, so that ``x / scale + zero_point + 0.5`` stays below 256 and truncating
# it to uint8 rounds to the nearest step without overflow.
_DYNAMIC_STEPS = 254
_FIXED_SCALE = 1.0 / 255  # inside an inverted bottleneck every channel is rescaled to [0, 1]
_SMALLEST_RANGE = 1e-3  # a channel whose BatchNorm output is never positive keeps a tiny range


def check_int8_available() -> None:
    """Raise ``ValueError`` where this PyTorch build has no oneDNN int8 kernels."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        raise ValueError("int8 inference needs a PyTorch build with oneDNN (x86-64 CPU builds have it)")


@dataclass(frozen=True)
class QuantizedFrames:
    """uint8 frames `(B, T, C)` standing for ``(values - zero_point) * scale``."""

    values: torch.Tensor
    scale: float
    zero_point: int


def frame_mask(lengths: Optional[torch.Tensor], frames: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """`(B, T, 1)` mask of the valid frames (``None`` when ``lengths`` is None: no padding)."""
    return None if lengths is None else make_mask(lengths, frames, dtype).transpose(1, 2)


def quantize_frames(frames: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> QuantizedFrames:
    """Quantize fp32 frames `(B, T, C)` to uint8 on the range of the valid ones (a range that always holds 0).

    Args:
        frames: the frames; with ``lengths``, their padding frames are set to zero in place.
        lengths: `(B,)` valid frames of each utterance, or None when none is padded.
    """
    mask = frame_mask(lengths, frames.shape[1], frames.dtype)
    if mask is not None:
        frames.mul_(mask)
    low, high = torch.aminmax(frames)
    low, high = min(low.item(), 0.0), max(high.item(), 0.0)
    scale = (high - low) / _DYNAMIC_STEPS if high > low else 1.0
    zero_point = round(-low / scale)
    shifted = torch.add(torch.tensor(zero_point + 0.5), frames, alpha=1.0 / scale)  # in [0, 255.5)
    return QuantizedFrames(shifted.to(torch.uint8), scale, zero_point)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weight (symmetric, [-127, 127]) and its fp32 scale per output channel (dimension 0)."""
    scales = weight.reshape(weight.shape[0], -1).abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return torch.round(weight / scales.view(shape)).clamp_(-127, 127).to(torch.int8), scales.float()


def _folded(module: ConvBN) -> tuple[torch.Tensor, torch.Tensor]:
    """``module``'s convolution weight `(C_out, C_in / groups, k)` and bias with its eval-mode BatchNorm folded in."""
    with torch.no_grad():
        weight, bias = module.folded_weight()
    return weight.float().clone(), bias.float().clone()


def _relu_range(module: ConvBN) -> torch.Tensor:
    """Per channel, the top of the fixed range of ``ReLU(module(x))``: BatchNorm mean + RANGE_SIGMAS std."""
    bn = module.bn
    return (bn.bias + RANGE_SIGMAS * bn.weight.abs()).detach().float().clamp_min(_SMALLEST_RANGE)


class Int8Linear:
    """A point-wise layer ``x W^T + b`` on uint8 frames with an int8 ``W``.

    Args:
        weight: `(C_out, C_in)` fp32 weight.
        bias: `(C_out,)` fp32 bias.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        weight_int8, self.weight_scales = quantize_weight(weight)
        self.packed = torch.ops.onednn.qlinear_prepack(weight_int8, None)
        self.bias = bias.float().contiguous()
        self.weight_zero_points = torch.zeros(weight.shape[0], dtype=torch.int64)

    def __call__(
        self,
        x: QuantizedFrames,
        relu: bool = False,
        output_scale: Optional[float] = None,
        add: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """`(B, T, C_in)` uint8 frames to `(B, T, C_out)`: fp32, or uint8 on ``output_scale`` (zero point 0).

        Args:
            x: the input frames.
            relu: apply ReLU.
            output_scale: ``None`` for fp32 output, else the scale of the uint8 output.
            add: fp32 `(B, T, C_out)` added to the fp32 output (before ``relu``).
        """
        post_op = "relu" if relu else "none"
        if add is not None:
            return torch.ops.onednn.qlinear_pointwise.binary(
                x.values, x.scale, x.zero_point, self.packed, self.weight_scales, self.weight_zero_points, add,
                self.bias, 1.0, 0, torch.float32, 1.0, 0, "add", 1.0, post_op, [], "",
            )  # fmt: skip
        dtype, scale = (torch.float32, 1.0) if output_scale is None else (torch.uint8, output_scale)
        return torch.ops.onednn.qlinear_pointwise(
            x.values, x.scale, x.zero_point, self.packed, self.weight_scales, self.weight_zero_points, self.bias,
            scale, 0, dtype, post_op, [], "",
        )  # fmt: skip


class Int8Conv:
    """A "same"-padded convolution over time on uint8 frames with an int8 weight, full or depth-wise.

    Args:
        weight: `(C_out, C_in / groups, k)` fp32 weight.
        bias: `(C_out,)` fp32 bias.
        conv: the ``nn.Conv1d`` whose stride, padding, dilation and groups it takes.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, conv: nn.Conv1d) -> None:
        weight_int8, self.weight_scales = quantize_weight(weight.unsqueeze(2))  # (C_out, C_in / groups, 1, k)
        self.bias = bias.float().contiguous()
        self.weight_zero_points = torch.zeros(weight.shape[0], dtype=torch.int64)
        self.stride, self.padding = [1, conv.stride[0]], [0, conv.padding[0]]
        self.dilation, self.groups = [1, conv.dilation[0]], conv.groups
        # The activation's scale and zero point are given with each call; the ones here are placeholders.
        self.packed = torch.ops.onednn.qconv_prepack(
            weight_int8, self.weight_scales, 1.0, 0, self.stride, self.padding, self.dilation, self.groups, None
        )

    def __call__(self, x: QuantizedFrames, output_scale: Optional[float] = None) -> torch.Tensor:
        """`(B, T, C_in)` uint8 frames to `(B, T', C_out)` after ReLU: fp32, or uint8 on ``output_scale``."""
        batch, frames, channels = x.values.shape
        # (B, C, 1, T) in channels-last memory is exactly the (B, T, C) frames: no copy
        image = x.values.view(batch, frames, 1, channels).permute(0, 3, 2, 1)
        dtype, scale = (torch.float32, 1.0) if output_scale is None else (torch.uint8, output_scale)
        y = torch.ops.onednn.qconv_pointwise(
            image, x.scale, x.zero_point, self.packed, self.weight_scales, self.weight_zero_points, self.bias,
            self.stride, self.padding, self.dilation, self.groups, scale, 0, dtype, "relu", [], "",
        )  # fmt: skip
        return y.permute(0, 3, 2, 1).reshape(batch, y.shape[-1], y.shape[1])


def _check_relu(module: nn.Module) -> None:
    if type(module.act) is not nn.ReLU:
        raise ValueError(f"int8 inference supports ReLU networks only, got activation {type(module.act).__name__}")


class Int8ConvBNAct:
    """:class:`~ibnet_nemo.parts.blocks.ConvBNAct` in int8: fp32 frames in, fp32 frames out (after ReLU)."""

    def __init__(self, module: ConvBNAct) -> None:
        _check_relu(module)
        weight, bias = _folded(module.conv)
        conv = module.conv.conv
        self.stride = conv.stride[0]
        self.pointwise = conv.kernel_size[0] == 1
        self.op = Int8Linear(weight.squeeze(2), bias) if self.pointwise else Int8Conv(weight, bias, conv)
        self.output_lengths = module.output_lengths

    def __call__(self, frames: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
        """`(B, T, C_in)` fp32 frames and their `(B,)` lengths (None: no padding) to `(B, ceil(T / stride), C_out)`."""
        if self.pointwise:
            # a strided 1x1 convolution reads every stride-th frame
            lengths = None if lengths is None else self.output_lengths(lengths)
            return self.op(quantize_frames(frames[:, :: self.stride], lengths), relu=True)
        return self.op(quantize_frames(frames, lengths))


class Int8InvertedBottleneck:
    """:class:`~ibnet_nemo.parts.blocks.InvertedBottleneck` in int8 (see the module doc for the ranges)."""

    def __init__(self, module: InvertedBottleneck) -> None:
        _check_relu(module)
        expand_weight, expand_bias = _folded(module.conv_pw)
        depthwise_weight, depthwise_bias = _folded(module.conv_dw)
        project_weight, project_bias = _folded(module.conv_pwl)
        # Rescale every hidden channel to [0, 1] on its fixed range; the next layer takes the factor back.
        expand_range, depthwise_range = _relu_range(module.conv_pw), _relu_range(module.conv_dw)
        expand_weight, expand_bias = expand_weight / expand_range[:, None, None], expand_bias / expand_range
        depthwise_weight = depthwise_weight * (expand_range / depthwise_range)[:, None, None]
        depthwise_bias = depthwise_bias / depthwise_range
        project_weight = project_weight * depthwise_range[None, :, None]
        self.expand = Int8Linear(expand_weight.squeeze(2), expand_bias)
        self.depthwise = Int8Conv(depthwise_weight, depthwise_bias, module.conv_dw.conv)
        self.project = Int8Linear(project_weight.squeeze(2), project_bias)
        self.has_skip = module.has_skip
        self.output_lengths = module.output_lengths

    def __call__(
        self, frames: torch.Tensor, quantized: QuantizedFrames, lengths: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """`(B, T, C_in)` fp32 frames, their quantized form and `(B,)` lengths (None: no padding) to
        `(B, ceil(T / stride), C_out)` fp32."""
        # point-wise expansion
        hidden = self.expand(quantized, relu=True, output_scale=_FIXED_SCALE)
        mask = frame_mask(lengths, hidden.shape[1], hidden.dtype)
        if mask is not None:
            hidden.mul_(mask)  # the depth-wise convolution must see zeros past each utterance
        # depth-wise
        hidden = self.depthwise(QuantizedFrames(hidden, _FIXED_SCALE, 0), output_scale=_FIXED_SCALE)
        # point-wise linear projection (+ skip)
        return self.project(QuantizedFrames(hidden, _FIXED_SCALE, 0), add=frames if self.has_skip else None)


class Int8IBBlock:
    """:class:`~ibnet_nemo.parts.blocks.IBBlock` in int8: fp32 frames in and out, the stream quantized before each
    inverted bottleneck."""

    def __init__(self, module: IBBlock) -> None:
        self.layers = [Int8InvertedBottleneck(layer) for layer in module.layers]
        self.stride = module.stride
        self.residual = None
        if module.conv_res is not None:
            weight, bias = _folded(module.conv_res)
            self.residual = Int8Linear(weight.squeeze(2), bias)

    def __call__(self, frames: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
        """`(B, T, C_in)` fp32 frames and their `(B,)` lengths (None: no padding) to `(B, ceil(T / stride), C_out)`."""
        block_input = quantized = quantize_frames(frames, lengths)
        for index, layer in enumerate(self.layers):
            if index > 0:
                quantized = quantize_frames(frames, lengths)
            frames = layer(frames, quantized, lengths)
            lengths = None if lengths is None else layer.output_lengths(lengths)
        if self.residual is None:
            return frames
        if self.stride > 1:
            values = block_input.values[:, :: self.stride].contiguous()
            block_input = QuantizedFrames(values, block_input.scale, block_input.zero_point)
        return self.residual(block_input, add=frames)


Int8Layer = Union[Int8ConvBNAct, Int8IBBlock]


class Int8Encoder:
    """An IBNet encoder's layers in int8, on a padded batch.

    Args:
        layers: the encoder's :class:`~ibnet_nemo.parts.blocks.ConvBNAct` and
            :class:`~ibnet_nemo.parts.blocks.IBBlock` layers, in eval mode, with ReLU.

    Raises:
        ValueError: an activation other than ReLU, a layer of another kind, or no oneDNN in this PyTorch.
    """

    def __init__(self, layers: nn.ModuleList) -> None:
        check_int8_available()
        self.layers: list[Int8Layer] = []
        for layer in layers:
            if isinstance(layer, ConvBNAct):
                self.layers.append(Int8ConvBNAct(layer))
            elif isinstance(layer, IBBlock):
                self.layers.append(Int8IBBlock(layer))
            else:
                raise ValueError(f"no int8 form for a {type(layer).__name__} layer")
        self._output_lengths = [layer.output_lengths for layer in layers]

    def __call__(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch.

        Args:
            features: `(B, D, T)` fp32 on the CPU.
            lengths: `(B,)` valid frames of each utterance.

        Returns:
            `(B, D_out, T_out)` encoding (frames past ``encoded_lengths`` hold no meaning) and its `(B,)` int64
            ``encoded_lengths``.
        """
        if features.device.type != "cpu":
            raise ValueError(f"an int8 encoder runs on the CPU, got input on {features.device}")
        lengths = lengths.to(torch.int64)
        valid = lengths if bool((lengths < features.shape[-1]).any()) else None
        frames = features.transpose(1, 2).contiguous()  # time-major (B, T, D)
        for layer, output_lengths in zip(self.layers, self._output_lengths):
            frames = layer(frames, valid)
            lengths = output_lengths(lengths)
            valid = None if valid is None else lengths
        return frames.transpose(1, 2).contiguous(), lengths
