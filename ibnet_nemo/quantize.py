"""int8 inference on the CPU for CTC models: IBNet, and NeMo's QuartzNet / any ``ConvASREncoder`` model.

:func:`quantize_int8` turns a restored fp32 ``EncDecCTCModel`` (in eval mode, on the CPU) into one that runs int8
and keeps NeMo's interface: ``forward(input_signal=...)`` / ``forward(processed_signal=...)`` with the same
outputs, and ``transcribe()``. The model is changed in place; its parameters stay fp32, so a ``.nemo`` file (on
disk, or saved again from the quantized model) holds the fp32 weights and quantization happens at load time.

- IBNet (:class:`~ibnet_nemo.modules.IBNetEncoder`): every convolution runs int8, see
  :mod:`ibnet_nemo.parts.int8`.
- ``ConvASREncoder`` (QuartzNet, Jasper): the point-wise (kernel-1) convolutions, with the BatchNorm after them
  folded in, run int8 (:class:`Int8PointwiseConv`); NeMo's depth-wise convolutions stay fp32.

In both, the activations entering an int8 layer are quantized on the range of the batch's valid frames, padding
zeroed first: what the padding holds never changes a valid frame. The decoder stays fp32.
"""

from __future__ import annotations

from typing import Optional

import torch
from nemo.collections.asr.models import EncDecCTCModel
from nemo.collections.asr.modules import ConvASREncoder
from nemo.collections.asr.parts.submodules.jasper import MaskedConv1d
from torch import nn

from ibnet_nemo.modules import IBNetEncoder
from ibnet_nemo.parts.conv_bn import capturing_graph, fold_batchnorm
from ibnet_nemo.parts.int8 import Int8Linear, check_int8_available, quantize_frames

__all__ = ["QUANTIZATIONS", "Int8PointwiseConv", "apply_quantization", "check_quantization", "quantize_int8"]

#: What the ``quantize`` option of the scripts accepts (besides null for fp32).
QUANTIZATIONS = ("int8",)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def quantize_int8(model: EncDecCTCModel) -> EncDecCTCModel:
    """Make ``model`` run int8 on the CPU (in place; see the module doc). Returns ``model``.

    Args:
        model: an ``EncDecCTCModel`` (character or sub-word) with an IBNet or ``ConvASREncoder`` encoder, in eval
            mode, on the CPU.

    Raises:
        ValueError: ``model`` is not a CTC model, is on a GPU, is in training mode, has another encoder, uses an
            activation int8 does not support, or PyTorch has no oneDNN.
    """
    if not isinstance(model, EncDecCTCModel):
        raise ValueError(f"quantize_int8 takes an EncDecCTCModel, got {type(model).__name__}")
    device = _model_device(model)
    if device.type != "cpu":
        raise ValueError(f"int8 inference runs on the CPU, but the model is on {device}; move it first: model.cpu()")
    if model.training:
        raise ValueError("quantize_int8 needs a model in eval mode (model.eval()): int8 runs inference only")
    check_int8_available()
    encoder = model.encoder
    if isinstance(encoder, IBNetEncoder):
        encoder.quantize_int8()
    elif isinstance(encoder, ConvASREncoder):
        _quantize_pointwise_convs(encoder)
    else:
        raise ValueError(
            f"quantize_int8 supports IBNetEncoder and ConvASREncoder encoders, got {type(encoder).__name__}"
        )
    return model


def apply_quantization(model: EncDecCTCModel, quantize: Optional[str]) -> EncDecCTCModel:
    """``model`` as the scripts' ``quantize`` option asks: unchanged for None, :func:`quantize_int8` for ``"int8"``.

    Raises:
        ValueError: an unknown ``quantize`` value, or one :func:`quantize_int8` raises.
    """
    check_quantization(quantize)
    return model if quantize is None else quantize_int8(model)


def check_quantization(quantize: Optional[str]) -> None:
    """Raise ``ValueError`` unless ``quantize`` is None or one of :data:`QUANTIZATIONS`."""
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be null (fp32) or one of {list(QUANTIZATIONS)}, got {quantize!r}")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class Int8PointwiseConv:
    """A kernel-1 ``MaskedConv1d`` of NeMo's, with the ``BatchNorm1d`` after it folded in, in int8.

    It replaces the convolution's ``forward`` (same call: ``(x, lens)`` to ``(out, lens)``); the BatchNorm's own
    ``forward`` becomes the identity. Their parameters stay as they are.

    Args:
        conv: the convolution (kernel 1, stride 1, no groups or heads).
        bn: the BatchNorm that follows it in eval mode, or None.
    """

    def __init__(self, conv: MaskedConv1d, bn: Optional[nn.BatchNorm1d]) -> None:
        with torch.no_grad():
            weight, bias = conv.conv.weight.squeeze(2).float(), conv.conv.bias
            if bn is not None:
                weight, bias = fold_batchnorm(weight, bias, bn)
            if bias is None:
                bias = torch.zeros(weight.shape[0])
        self.linear = Int8Linear(weight, bias)
        self.conv = conv

    def __call__(self, x: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, C_in, T)` and `(B,)` lengths to `(B, C_out, T)` and the same lengths."""
        if (self.conv.training and torch.is_grad_enabled()) or capturing_graph():
            raise RuntimeError("an int8 convolution runs inference only: it cannot train or export (fp32 can)")
        frames = x.transpose(1, 2).contiguous()  # time-major (B, T, C_in)
        valid = lens if bool((lens < x.shape[2]).any()) else None
        return self.linear(quantize_frames(frames, valid)).transpose(1, 2).contiguous(), lens


def _is_pointwise(module: nn.Module) -> bool:
    if not isinstance(module, MaskedConv1d) or module.heads != -1 or module.pad_layer is not None:
        return False
    conv = module.conv
    return conv.kernel_size[0] == 1 and conv.stride[0] == 1 and conv.groups == 1 and type(conv) is nn.Conv1d


def _quantize_pointwise_convs(encoder: ConvASREncoder) -> None:
    """Give every kernel-1 ``MaskedConv1d`` of ``encoder`` an :class:`Int8PointwiseConv` forward."""
    for block in encoder.encoder:
        sequences = [block.mconv, *(block.res or [])]
        for sequence in sequences:
            modules = list(sequence)
            for module, following in zip(modules, modules[1:] + [None]):
                if not _is_pointwise(module):
                    continue
                bn = following if isinstance(following, nn.BatchNorm1d) else None
                module.forward = Int8PointwiseConv(module, bn)
                if bn is not None:
                    bn.forward = _identity
