"""Building blocks: shapes, lengths, skip rules, the linear bottleneck, masking, argument checks."""

import pytest
import torch
from conftest import randomize_batchnorm

from ibnet_nemo.parts.blocks import ConvBNAct, IBBlock, InvertedBottleneck, make_mask
from ibnet_nemo.parts.conv_bn import ConvBN, conv_output_lengths


@pytest.mark.parametrize("length", [1, 2, 99, 100, 101])
def test_stride_two_halves_lengths_rounding_up(length):
    # padding 16 for k=33: (L + 2*16 - 1*(33 - 1) - 1) // 2 + 1 == ceil(L / 2)
    lengths = torch.tensor([length])
    assert conv_output_lengths(lengths, kernel_size=33, stride=2, dilation=1).item() == (length - 1) // 2 + 1
    assert conv_output_lengths(lengths, kernel_size=87, stride=1, dilation=2).item() == length


@pytest.mark.parametrize("time_steps", [37, 38])
def test_conv_bn_act_shapes_for_odd_and_even_lengths(time_steps):
    block = ConvBNAct(8, 12, kernel_size=33, stride=2)
    x = torch.randn(3, 8, time_steps)
    y = block(x, make_mask(torch.tensor([time_steps, 20, 5]), time_steps, x.dtype))
    assert y.shape == (3, 12, (time_steps + 1) // 2)
    assert (y >= 0).all()  # ReLU


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "stride", "has_skip"),
    [(16, 16, 1, True), (16, 32, 1, False), (32, 16, 1, False), (16, 16, 2, False)],
)
def test_skip_only_for_same_width_and_stride_one(in_channels, out_channels, stride, has_skip):
    block = InvertedBottleneck(in_channels, out_channels, kernel_size=5, stride=stride).eval()
    assert block.has_skip is has_skip
    # With a zero projection the module output is its skip alone: the input, or zeros.
    torch.nn.init.zeros_(block.conv_pwl.conv.weight)
    x = torch.randn(2, in_channels, 20)
    y = block(x, torch.ones(2, 1, 20))
    assert y.shape == (2, out_channels, (20 - 1) // stride + 1)
    torch.testing.assert_close(y, x if has_skip else torch.zeros_like(y))


def test_inverted_bottleneck_widths_and_parameter_count():
    block = InvertedBottleneck(24, 40, kernel_size=7, expansion=3)
    assert block.conv_pw.conv.weight.shape == (72, 24, 1)
    assert block.conv_dw.conv.weight.shape == (72, 1, 7)
    assert block.conv_pwl.conv.weight.shape == (40, 72, 1)
    expected = 24 * 72 + 2 * 72 + 72 * 7 + 2 * 72 + 72 * 40 + 2 * 40
    assert sum(p.numel() for p in block.parameters()) == expected


@pytest.mark.parametrize("fast", [True, False])
def test_projection_is_linear_and_matches_the_written_out_computation(fast):
    torch.manual_seed(0)
    block = InvertedBottleneck(8, 12, kernel_size=5, expansion=2, fast=fast)
    randomize_batchnorm(block)
    block.eval()
    x = torch.randn(2, 8, 30)
    y = block(x, torch.ones(2, 1, 30))

    def conv_bn(layer, h):
        return layer.bn(layer.conv(h))

    hidden = torch.relu(conv_bn(block.conv_dw, torch.relu(conv_bn(block.conv_pw, x))))
    expected = conv_bn(block.conv_pwl, hidden)  # no activation after the projection
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert (y < 0).float().mean() > 0.2  # a ReLU there would leave no negative values


@pytest.mark.parametrize(
    "block",
    [
        InvertedBottleneck(6, 6, kernel_size=9),
        IBBlock(6, 10, kernel_size=9, repeat=2),
        IBBlock(6, 10, kernel_size=9, repeat=3, stride=2),
        ConvBNAct(6, 10, kernel_size=9, stride=2),
    ],
)
def test_padding_never_reaches_valid_frames(block):
    block.eval()
    randomize_batchnorm(block)
    lengths = torch.tensor([25, 13])
    x = torch.randn(2, 6, 25)
    garbage = x.clone()
    garbage[1, :, 13:] = 1e4 * torch.randn(6, 12)
    mask = make_mask(lengths, 25, x.dtype)
    valid = block.output_lengths(lengths)
    y_clean, y_garbage = block(x, mask), block(garbage, mask)
    torch.testing.assert_close(y_garbage[1, :, : valid[1]], y_clean[1, :, : valid[1]])


def test_ib_block_structure_and_dual_residual():
    block = IBBlock(8, 16, kernel_size=5, repeat=3)
    assert len(block.layers) == 3
    assert [layer.has_skip for layer in block.layers] == [False, True, True]
    assert block.layers[0].conv_pw.conv.in_channels == 8
    assert block.conv_res.conv.weight.shape == (16, 8, 1)
    single = IBBlock(16, 16, kernel_size=5, repeat=1, residual=False)
    assert single.conv_res is None and single.layers[0].has_skip

    # The block output is the chain of modules plus the 1x1 residual of the block input.
    block.eval()
    x = torch.randn(2, 8, 12)
    mask = torch.ones(2, 1, 12)
    chain = x
    for layer in block.layers:
        chain = layer(chain, mask)
    torch.testing.assert_close(block(x, mask), chain + block.conv_res(x))


def test_strided_ib_block_strides_the_first_depth_wise_and_the_residual():
    block = IBBlock(8, 16, kernel_size=5, repeat=3, stride=2)
    assert [layer.conv_dw.conv.stride for layer in block.layers] == [(2,), (1,), (1,)]
    assert [layer.has_skip for layer in block.layers] == [False, True, True]
    assert block.conv_res.conv.stride == (2,)
    assert block.output_lengths(torch.tensor([1, 2, 19, 20])).tolist() == [1, 1, 10, 10]  # ceil(L / 2)


@pytest.mark.parametrize("fast", [True, False])
def test_strided_ib_block_keeps_every_stride_th_frame_on_both_paths(fast):
    # One module and its residual, stride 2 and stride 1 with the same weights: the strided block computes
    # frames 0, 2, 4, ... of the unstrided one, so the depth-wise path and the 1x1 residual stay aligned.
    torch.manual_seed(0)
    strided = IBBlock(8, 12, kernel_size=7, repeat=1, stride=2, fast=fast)
    randomize_batchnorm(strided)
    unstrided = IBBlock(8, 12, kernel_size=7, repeat=1, fast=fast)
    unstrided.load_state_dict(strided.state_dict())
    strided.eval(), unstrided.eval()
    x = torch.randn(2, 8, 21)
    with torch.inference_mode():
        y = strided(x, None)
        expected = unstrided(x, None)[:, :, ::2]
    assert y.shape == (2, 12, 11)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_conv_bn_fast_path_equals_reference_for_each_convolution_kind():
    torch.manual_seed(0)
    x = torch.randn(3, 12, 41)
    for kwargs in (
        {"kernel_size": 1},
        {"kernel_size": 1, "stride": 2},
        {"kernel_size": 9, "groups": 12},
        {"kernel_size": 5, "stride": 2},
        {"kernel_size": 9, "stride": 2, "groups": 12},
        {"kernel_size": 7, "dilation": 2, "groups": 12},
    ):
        out_channels = 12 if kwargs.get("groups") else 20
        fast = ConvBN(12, out_channels, **kwargs)
        reference = ConvBN(12, out_channels, fast=False, **kwargs)
        randomize_batchnorm(fast)
        reference.load_state_dict(fast.state_dict())
        for mode in ("train", "eval"):
            fast.train(mode == "train")
            reference.train(mode == "train")
            torch.testing.assert_close(fast(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: InvertedBottleneck(8, 8, kernel_size=4), "kernel_size must be odd"),
        (lambda: InvertedBottleneck(8, 8, kernel_size=5, expansion=0), "expansion must be a positive integer"),
        (lambda: InvertedBottleneck(0, 8, kernel_size=5), "in_channels must be a positive integer"),
        (lambda: InvertedBottleneck(8, 8, kernel_size=5, dropout=1.0), "dropout must be in"),
        (lambda: ConvBNAct(8, 8, kernel_size=5, activation="tanh"), "activation must be one of"),
        (lambda: ConvBNAct(8, 8, kernel_size=5, stride=0), "stride must be a positive integer"),
        (lambda: IBBlock(8, 8, kernel_size=5, repeat=0), "repeat must be a positive integer"),
        (lambda: IBBlock(8, 8, kernel_size=5, stride=0), "stride must be a positive integer, got 0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()
