"""Time reduction beyond 2x: per-block strides, output lengths, masking, subsampling factor, size."""

import pytest
import torch
from conftest import small_encoder

from ibnet_nemo.modules import IBNetEncoder

# strides of C1, B1..B5, C2
LAYOUTS = {
    "2x": (2, 1, 1, 1, 1, 1, 1),
    "4x": (2, 1, 2, 1, 1, 1, 1),
    "8x": (2, 1, 2, 1, 2, 1, 1),
}


@pytest.mark.parametrize("T", [1, 2, 3, 63, 64, 97, 100])
def test_lengths_follow_each_stride_rounding_up(T):
    # Each strided convolution keeps ceil(L / stride) frames ("same" padding, odd kernels).
    expected = {
        "2x": (T + 1) // 2,  # ceil(T / 2)
        "4x": ((T + 1) // 2 + 1) // 2,  # ceil(ceil(T / 2) / 2)
        "8x": (((T + 1) // 2 + 1) // 2 + 1) // 2,  # ceil(ceil(ceil(T / 2) / 2) / 2)
    }
    lengths = torch.tensor([T, max(T - 1, 1), (T + 2) // 3])
    for name, strides in LAYOUTS.items():
        encoder = small_encoder(strides=strides)
        with torch.inference_mode():
            y, y_lengths = encoder(audio_signal=torch.randn(3, 16, T), length=lengths)
        assert y.shape == (3, 32, expected[name]), name
        assert y_lengths.tolist() == [-(-int(length) // encoder.subsampling_factor) for length in lengths], name
        assert y_lengths[0].item() == expected[name]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("name", ["4x", "8x"])
def test_padded_batch_equals_each_utterance_alone(name, fast):
    encoder = small_encoder(strides=LAYOUTS[name], fast=fast)
    lengths = torch.tensor([64, 61, 41, 17, 8, 1])
    batch = 1e3 * torch.randn(len(lengths), 16, 64)  # whatever the padding holds
    with torch.inference_mode():
        y, y_lengths = encoder(audio_signal=batch, length=lengths)
        for b, length in enumerate(lengths.tolist()):
            alone, alone_length = encoder(audio_signal=batch[b : b + 1, :, :length], length=lengths[b : b + 1])
            valid = alone_length.item()
            assert y_lengths[b].item() == valid == alone.shape[-1]
            torch.testing.assert_close(y[b, :, :valid], alone[0], rtol=1e-5, atol=1e-5 * alone.abs().max().item())


def test_fast_path_equals_reference_at_8x():
    fast = small_encoder(strides=LAYOUTS["8x"])
    reference = small_encoder(strides=LAYOUTS["8x"], fast=False)
    x, lengths = torch.randn(3, 16, 70), torch.tensor([70, 53, 9])
    with torch.inference_mode():
        torch.testing.assert_close(
            fast(audio_signal=x, length=lengths), reference(audio_signal=x, length=lengths), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    ("strides", "factor"),
    [
        ((2, 1, 1, 1, 1, 1, 1), 2),
        ((2, 1, 2, 1, 1, 1, 1), 4),
        ((2, 1, 2, 1, 2, 1, 1), 8),
        ((1, 1, 1, 1, 1, 1, 1), 1),
        ((3, 1, 1, 1, 1, 1, 2), 6),
    ],
)
def test_subsampling_factor_is_the_product_of_the_strides(strides, factor):
    encoder = small_encoder(strides=strides)
    assert encoder.subsampling_factor == factor
    with torch.inference_mode():
        y, _ = encoder(audio_signal=torch.randn(1, 16, 5 * factor), length=torch.tensor([5 * factor]))
    assert y.shape[-1] == 5


def test_strides_in_the_block_list():
    encoder = IBNetEncoder(
        feat_in=16,
        blocks=[
            {"type": "conv", "filters": 8, "kernel": 5, "stride": 2},
            {"type": "ib", "filters": 16, "kernel": 5, "repeat": 2, "stride": 3},
            {"type": "ib", "filters": 16, "kernel": 5, "repeat": 1, "residual": False, "stride": 2},
        ],
    )
    assert encoder.subsampling_factor == 12
    y, lengths = encoder(audio_signal=torch.randn(2, 16, 50), length=torch.tensor([50, 23]))
    assert y.shape == (2, 16, 5) and lengths.tolist() == [5, 2]  # ceil(ceil(ceil(L / 2) / 3) / 2)


def test_strides_leave_the_parameter_count_unchanged():
    counts = {
        name: sum(p.numel() for p in IBNetEncoder(feat_in=64, strides=strides).parameters())
        for name, strides in LAYOUTS.items()
    }
    # the published IBNet C=192: 8,198,429 with the 768 -> 29 decoder
    assert counts["2x"] == counts["4x"] == counts["8x"] == 8_198_429 - (768 * 29 + 29)


@pytest.mark.parametrize(
    ("strides", "message"),
    [
        ((2, 2), r"strides must list 7 positive integers \(C1, B1..B5, C2\), got \[2, 2\]"),
        ((2, 0, 1, 1, 1, 1, 1), r"got \[2, 0, 1, 1, 1, 1, 1\]"),
        ((2, 1, 1.5, 1, 1, 1, 1), r"got \[2, 1, 1.5, 1, 1, 1, 1\]"),
        ((2, 1, 1, 1, 1, 1, -2), r"got \[2, 1, 1, 1, 1, 1, -2\]"),
    ],
)
def test_bad_strides_raise_value_error_naming_the_value(strides, message):
    with pytest.raises(ValueError, match=message):
        IBNetEncoder(feat_in=16, C=8, strides=strides)
