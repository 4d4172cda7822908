"""IBNet encoder: QuartzNet's macro layout built from inverted bottlenecks, as a typed NeMo module."""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Any, Iterator, Optional, Sequence

import torch
from nemo.collections.asr.parts.submodules.jasper import init_weights
from nemo.core.classes import Exportable, NeuralModule, typecheck
from nemo.core.neural_types import AcousticEncodedRepresentation, LengthsType, NeuralType, SpectrogramType
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.utils.checkpoint import checkpoint

from ibnet_nemo.parts.blocks import ConvBNAct, IBBlock, make_mask
from ibnet_nemo.parts.conv_bn import ConvBN, capturing_graph
from ibnet_nemo.parts.int8 import Int8Encoder

__all__ = ["IBNetEncoder", "ibnet_layout"]

# Block class and the keys a `blocks` entry may carry, per block type. A key the entry omits takes the
# encoder-level value where there is one (dropout, repeat, expansion), else the block constructor's default.
_BLOCK_TYPES = {"conv": ConvBNAct, "ib": IBBlock}
_BLOCK_KEYS = {
    "conv": {"type", "filters", "kernel", "stride", "dilation", "dropout"},
    "ib": {"type", "filters", "kernel", "stride", "repeat", "expansion", "dilation", "dropout", "residual"},
}
_REQUIRED_KEYS = ("filters", "kernel")
_ARGUMENT_NAMES = {"filters": "out_channels", "kernel": "kernel_size"}  # other keys are named as the arguments


def ibnet_layout(
    C: int, repeat: int, expansion: int, kernels: Sequence[int], c2_dilation: int, strides: Sequence[int]
) -> list[dict[str, Any]]:
    """The IBNet family as a per-block list (the form ``IBNetEncoder(blocks=...)`` takes).

    C1 conv C, B1..B5 IBBlocks C, C, 2C, 2C, 2C, C2 a single IBConv 2C (no block residual), C3 a 1x1 conv to
    4C. The decoder (NeMo's ConvASRDecoder) is C4. The published model strides C1 by 2 and nothing else.

    Args:
        C: base width.
        repeat: IBConv modules per IBBlock `R`.
        expansion: inverted-bottleneck width multiplier `t`.
        kernels: seven odd kernel widths, for C1, B1..B5 and C2.
        c2_dilation: dilation of C2's depth-wise convolution.
        strides: seven time strides, for C1, B1..B5 and C2; the encoder reduces time by their product.
    """
    if len(kernels) != 7:
        raise ValueError(f"kernels must list 7 widths (C1, B1..B5, C2), got {list(kernels)}")
    if len(strides) != 7 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in strides):
        raise ValueError(f"strides must list 7 positive integers (C1, B1..B5, C2), got {list(strides)}")
    widths = (C, C, 2 * C, 2 * C, 2 * C)
    return [
        {"type": "conv", "filters": C, "kernel": kernels[0], "stride": strides[0]},
        *(
            {"type": "ib", "filters": w, "kernel": k, "stride": s, "repeat": repeat, "expansion": expansion}
            for w, k, s in zip(widths, kernels[1:6], strides[1:6])
        ),
        {
            "type": "ib",
            "filters": 2 * C,
            "kernel": kernels[6],
            "stride": strides[6],
            "repeat": 1,
            "expansion": expansion,
            "dilation": c2_dilation,
            "residual": False,
        },
        {"type": "conv", "filters": 4 * C, "kernel": 1},
    ]


@contextlib.contextmanager
def _running_stats_restored(module: nn.Module) -> Iterator[None]:
    """Puts back ``module``'s buffers (BatchNorm running statistics) on exit: a recomputed forward must not
    update them a second time."""
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        yield
    finally:  # also when autograd stops the recomputation early, once it has what backward needs
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


class IBNetEncoder(NeuralModule, Exportable):
    """IBNet encoder, a drop-in replacement for NeMo's ``ConvASREncoder`` in CTC models.

    Built either from one width knob ``C`` (the published family, see :func:`ibnet_layout`) or from an
    explicit ``blocks`` list. Frames past each utterance's length are zeroed before every convolution that
    mixes time, so a padded batch gives the same outputs on valid frames as each utterance run alone.

    Args:
        feat_in: input features `D` (mel bins).
        C: base width; the encoder outputs ``4 * C`` channels (Default: ``192``).
        repeat: IBConv modules per IBBlock `R` (Default: ``3``).
        expansion: inverted-bottleneck width multiplier `t` (Default: ``2``).
        kernels: kernel widths of C1, B1..B5, C2 (Default: ``(33, 33, 39, 51, 63, 75, 87)``).
        c2_dilation: dilation of C2's depth-wise convolution; QuartzNet uses 2 there (Default: ``1``).
        strides: time strides of C1, B1..B5, C2; their product is the :attr:`subsampling_factor`, e.g.
            ``(2, 1, 2, 1, 1, 1, 1)`` for 4x, ``(2, 1, 2, 1, 2, 1, 1)`` for 8x. An IBBlock strides its first
            depth-wise convolution and its block residual (Default: ``(2, 1, 1, 1, 1, 1, 1)``, the published 2x).
        dropout: dropout in every module (Default: ``0.0``).
        activation: ``relu``, ``relu6``, ``silu`` or ``gelu`` (Default: ``"relu"``).
        blocks: explicit layout, a list of ``{type: conv | ib, filters, kernel, ...}`` entries that replaces
            the one ``C``, ``repeat``, ``kernels``, ``c2_dilation`` and ``strides`` describe (Default: ``None``).
        fast: run the fast path (time-major on the CPU, folded BatchNorm in eval mode on the CPU and on a GPU,
            see :class:`~ibnet_nemo.parts.conv_bn.ConvBN`); ``False`` runs plain ``Conv1d`` + ``BatchNorm1d``, same
            weights, same results (Default: ``True``).
        init_mode: weight initialisation, as in ``ConvASREncoder`` (Default: ``"xavier_uniform"``).
        checkpoint_blocks: in training, keep only each block's input for backward and recompute the block's
            activations there: less memory for about one more forward pass per step. Gradients and BatchNorm
            running statistics are the same as without it (Default: ``False``).
    """

    def __init__(
        self,
        feat_in: int,
        C: int = 192,
        repeat: int = 3,
        expansion: int = 2,
        kernels: Sequence[int] = (33, 33, 39, 51, 63, 75, 87),
        c2_dilation: int = 1,
        strides: Sequence[int] = (2, 1, 1, 1, 1, 1, 1),
        dropout: float = 0.0,
        activation: str = "relu",
        blocks: Optional[Sequence[dict]] = None,
        fast: bool = True,
        init_mode: str = "xavier_uniform",
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("feat_in", feat_in), ("C", C)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(blocks, (ListConfig, DictConfig)):
            blocks = OmegaConf.to_container(blocks)
        if isinstance(kernels, ListConfig):
            kernels = OmegaConf.to_container(kernels)
        if isinstance(strides, ListConfig):
            strides = OmegaConf.to_container(strides)
        if blocks is None:
            blocks = ibnet_layout(C, repeat, expansion, kernels, c2_dilation, strides)
        if not blocks:
            raise ValueError("blocks must hold at least one block")

        encoder_level = {"dropout": dropout, "repeat": repeat, "expansion": expansion}
        layers = []
        channels = feat_in
        for index, spec in enumerate(blocks):
            block_type = spec.get("type")
            if block_type not in _BLOCK_TYPES:
                raise ValueError(f"blocks[{index}].type must be 'conv' or 'ib', got {block_type!r}")
            unknown = set(spec) - _BLOCK_KEYS[block_type]
            if unknown:
                raise ValueError(f"blocks[{index}] ({block_type}) has unknown keys {sorted(unknown)}")
            missing = [key for key in _REQUIRED_KEYS if key not in spec]
            if missing:
                raise ValueError(f"blocks[{index}] ({block_type}) needs the key {missing[0]!r}")
            arguments = {key: value for key, value in encoder_level.items() if key in _BLOCK_KEYS[block_type]}
            arguments.update({_ARGUMENT_NAMES.get(key, key): value for key, value in spec.items() if key != "type"})
            layers.append(_BLOCK_TYPES[block_type](channels, activation=activation, fast=fast, **arguments))
            channels = spec["filters"]
        self.layers = nn.ModuleList(layers)
        self._feat_in = feat_in
        self._feat_out = channels
        self.checkpoint_blocks = checkpoint_blocks
        # int8 inference (set by quantize_int8): a snapshot of the weights, kept out of the state dict
        self.int8_engine: Optional[Int8Encoder] = None
        self.apply(lambda module: init_weights(module, mode=init_mode))

    @property
    def input_types(self):
        """Input ports: spectrogram `(B, D, T)` and lengths `(B,)`."""
        return OrderedDict(
            {
                "audio_signal": NeuralType(("B", "D", "T"), SpectrogramType()),
                "length": NeuralType(tuple("B"), LengthsType()),
            }
        )

    @property
    def output_types(self):
        """Output ports: encoding `(B, 4C, ceil(T / subsampling_factor))` and its lengths `(B,)`."""
        return OrderedDict(
            {
                "outputs": NeuralType(("B", "D", "T"), AcousticEncodedRepresentation()),
                "encoded_lengths": NeuralType(tuple("B"), LengthsType()),
            }
        )

    @property
    def subsampling_factor(self) -> int:
        """Input frames per output frame, the product of the block strides (2 for the published layout)."""
        return math.prod(layer.stride for layer in self.layers)

    @property
    def fast(self) -> bool:
        """Whether the convolutions run the fast path (see :class:`~ibnet_nemo.parts.conv_bn.ConvBN`)."""
        return all(module.fast for module in self.modules() if isinstance(module, ConvBN))

    @fast.setter
    def fast(self, value: bool) -> None:
        for module in self.modules():
            if isinstance(module, ConvBN):
                module.fast = value

    def quantize_int8(self) -> None:
        """Run inference in int8 on the CPU from now on (:class:`~ibnet_nemo.parts.int8.Int8Encoder`).

        The int8 weights are a snapshot of the current ones, BatchNorm folded in; the parameters themselves stay
        fp32 (a ``.nemo`` saved afterwards holds them). Call it again after changing the weights.

        Raises:
            ValueError: the encoder is in training mode, lives on a GPU, uses an activation other than ReLU, or
                PyTorch has no oneDNN.
        """
        if self.training:
            raise ValueError("int8 quantization needs the encoder in eval mode (.eval()): int8 runs inference only")
        device = next(self.parameters()).device
        if device.type != "cpu":
            raise ValueError(f"int8 inference runs on the CPU, but the encoder is on {device}; move it with .cpu()")
        self.int8_engine = Int8Encoder(self.layers)

    @typecheck()
    def forward(self, audio_signal: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a padded batch (in int8 after :meth:`quantize_int8`).

        Args:
            audio_signal: `(B, D, T)` features.
            length: `(B,)` valid frames of each utterance.

        Returns:
            `(B, D_out, T_out)` encoding (frames past ``encoded_lengths`` hold no meaning) and `(B,)` int64
            ``encoded_lengths``.
        """
        if self.int8_engine is not None:
            # Mode alone does not decide: NeMo's transcribe() leaves the encoder in training mode when it ends.
            if (self.training and torch.is_grad_enabled()) or capturing_graph():
                raise RuntimeError("an int8 encoder runs inference only: it cannot train or export (fp32 can)")
            return self.int8_engine(audio_signal, length)
        x = audio_signal
        length = length.to(torch.int64)
        # Without padding every frame is valid and the blocks skip masking; exported graphs keep it for any batch.
        padded = capturing_graph() or bool((length < x.shape[-1]).any())
        mask = make_mask(length, x.shape[-1], x.dtype) if padded else None
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                x = checkpoint(
                    layer,
                    x,
                    mask,
                    use_reentrant=False,
                    context_fn=lambda layer=layer: (contextlib.nullcontext(), _running_stats_restored(layer)),
                )
            else:
                x = layer(x, mask)
            length = layer.output_lengths(length)
            if padded and x.shape[-1] != mask.shape[-1]:  # the layer reduced time: the mask follows
                mask = make_mask(length, x.shape[-1], x.dtype)
        return x.contiguous(), length

    def input_example(self, max_batch: int = 1, max_dim: int = 256):
        """Example `(features, lengths)` for tracing and export."""
        device = next(self.parameters()).device
        features = torch.randn(max_batch, self._feat_in, max_dim, device=device)
        lengths = torch.full((max_batch,), max_dim, dtype=torch.int64, device=device)
        return features, lengths
