"""IBNetEncoder: the NeMo encoder contract, gradients, padding invariance, sizes, export."""

import numpy as np
import pytest
import torch
from conftest import ALL_CONFIGS, NO_DATA, SHIPPED_CONFIGS, compose, small_encoder, tiny_ibnet_model
from nemo.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE

from ibnet_nemo.modules import IBNetEncoder, ibnet_layout

# Encoder + decoder parameters (64 mel, 28 labels + blank): the exact figures, and the published sizes below.
EXPECTED_PARAMS = {
    "ibnet_c172": 6_677_069,
    "ibnet_c192": 8_198_429,
    "ibnet_c256": 14_109_725,
    "quartznet_5x5": 6_713_181,
    "quartznet_10x5": 12_818_781,
}
PUBLISHED_MILLIONS = {
    "ibnet_c172": 6.677,
    "ibnet_c192": 8.198,
    "ibnet_c256": 14.110,
    "quartznet_5x5": 6.713,
    "quartznet_10x5": 12.819,
}


def test_contract_ports_widths_and_lengths():
    encoder = small_encoder()
    assert set(encoder.input_types) == {"audio_signal", "length"}
    assert set(encoder.output_types) == {"outputs", "encoded_lengths"}
    assert encoder._feat_in == 16 and encoder._feat_out == 32 and encoder.subsampling_factor == 2
    x = torch.randn(3, 16, 51)
    y, lengths = encoder(audio_signal=x, length=torch.tensor([51, 50, 7]))
    assert y.shape == (3, 32, 26)
    assert lengths.dtype == torch.int64 and lengths.tolist() == [26, 25, 4]  # ceil(L / 2)
    with pytest.raises(TypeError):
        encoder(x, torch.tensor([51, 50, 7]))  # typed forward: keyword arguments only


def test_every_parameter_gets_a_gradient():
    encoder = small_encoder(dropout=0.1).train()
    y, lengths = encoder(audio_signal=torch.randn(2, 16, 40), length=torch.tensor([40, 31]))
    (y * torch.randn_like(y)).sum().backward()
    missing = [name for name, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fast", [True, False])
def test_padded_batch_equals_each_utterance_alone(fast, dtype):
    encoder = small_encoder(fast=fast).to(dtype)
    lengths = torch.tensor([64, 41, 17, 1])
    batch = 1e3 * torch.randn(4, 16, 64, dtype=dtype)  # whatever the padding holds
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    with torch.no_grad():
        y, y_lengths = encoder(audio_signal=batch, length=lengths)
        for b, length in enumerate(lengths.tolist()):
            alone, alone_length = encoder(audio_signal=batch[b : b + 1, :, :length], length=lengths[b : b + 1])
            valid = alone_length.item()
            assert y_lengths[b].item() == valid
            assert y.dtype == alone.dtype == dtype
            torch.testing.assert_close(
                y[b, :, :valid], alone[0], rtol=tolerance, atol=tolerance * alone.abs().max().item()
            )


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_shipped_config_gives_finite_log_probs_and_a_gradient_for_every_parameter(name, tiny_tokenizer):
    cfg = compose(name, list(NO_DATA))
    if "tokenizer" in cfg.model:
        cfg = compose(name, [*NO_DATA, f"model.tokenizer.dir={tiny_tokenizer}"])
    torch.manual_seed(0)
    model = (EncDecCTCModelBPE if "tokenizer" in cfg.model else EncDecCTCModel)(cfg=cfg.model).train()
    # SpecCutout (the LibriSpeech recipes' default augmentation) needs batches of at least 1.2 s.
    audio = torch.randn(2, 24000, generator=torch.Generator().manual_seed(0))
    samples = torch.tensor([24000, 19200])
    log_probs, encoded_lengths, _ = model(input_signal=audio, input_signal_length=samples)
    _, frames = model.preprocessor(input_signal=audio, length=samples)
    assert encoded_lengths.tolist() == (-(-frames // model.encoder.subsampling_factor)).tolist()  # ceil
    assert log_probs.shape[0] == 2 and log_probs.shape[1] >= encoded_lengths.max()
    assert log_probs.shape[2] == len(model.decoder.vocabulary) + 1  # + CTC blank
    assert torch.isfinite(log_probs).all()
    targets = torch.tensor([[1, 2, 3], [3, 2, 1]])
    loss = model.loss(
        log_probs=log_probs, targets=targets, input_lengths=encoded_lengths, target_lengths=torch.tensor([3, 3])
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert torch.isfinite(loss) and not missing


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_parameter_counts_of_the_shipped_configs(name):
    model = EncDecCTCModel(cfg=compose(name, NO_DATA).model)
    assert model.num_weights == EXPECTED_PARAMS[name]
    assert model.num_weights / 1e6 == pytest.approx(PUBLISHED_MILLIONS[name], rel=0.005)
    assert model.decoder._feat_in == model.encoder._feat_out


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.encoder.C=256", EXPECTED_PARAMS["ibnet_c256"]),
        ("model.encoder.C=64", None),
        ("model.encoder.repeat=2", None),
        ("model.encoder.expansion=3", None),
    ],
)
def test_one_command_line_override_gives_a_consistent_model(override, expected):
    model = EncDecCTCModel(cfg=compose("ibnet_c192", [*NO_DATA, override]).model).eval()
    if expected is not None:
        assert model.num_weights == expected
    log_probs, encoded_lengths, _ = model(input_signal=torch.randn(1, 4000), input_signal_length=torch.tensor([4000]))
    assert encoded_lengths.item() == 13  # 4000 samples -> 26 frames (hop 160) -> 13 after the stride
    assert log_probs.shape[-1] == 29  # 28 labels + blank


def test_explicit_block_list_equals_the_width_knob():
    layout = ibnet_layout(8, 2, 2, (5, 5, 7, 7, 9, 9, 11), 1, (2, 1, 1, 1, 1, 1, 1))
    knob, listed = small_encoder(), IBNetEncoder(feat_in=16, blocks=layout)
    listed.load_state_dict(knob.state_dict())
    knob.eval(), listed.eval()
    x, lengths = torch.randn(2, 16, 30), torch.tensor([30, 20])
    torch.testing.assert_close(listed(audio_signal=x, length=lengths)[0], knob(audio_signal=x, length=lengths)[0])
    # A hand-written layout: no C1 stride, dilated blocks.
    custom = IBNetEncoder(
        feat_in=16,
        blocks=[
            {"type": "conv", "filters": 12, "kernel": 3},
            {"type": "ib", "filters": 24, "kernel": 5, "repeat": 2, "dilation": 2, "expansion": 4},
        ],
    )
    y, y_lengths = custom(audio_signal=x, length=lengths)
    assert y.shape == (2, 24, 30) and custom.subsampling_factor == 1 and y_lengths.tolist() == [30, 20]


def test_block_entries_take_encoder_values_then_block_defaults():
    encoder = IBNetEncoder(
        feat_in=16,
        repeat=2,
        expansion=3,
        dropout=0.1,
        blocks=[
            {"type": "conv", "filters": 12, "kernel": 3},
            {"type": "ib", "filters": 12, "kernel": 5},
            {"type": "ib", "filters": 24, "kernel": 5, "repeat": 1, "expansion": 2, "dropout": 0.0, "residual": False},
        ],
    )
    conv, first, second = encoder.layers
    assert conv.drop.p == 0.1 and conv.stride == 1
    # omitted: the encoder's repeat, expansion and dropout, the block's dilation 1 and residual
    assert len(first.layers) == 2 and first.layers[0].conv_pw.conv.out_channels == 36
    assert first.layers[0].drop.p == 0.1 and first.layers[0].conv_dw.conv.dilation == (1,)
    assert first.conv_res is not None
    # given: the entry's values
    assert len(second.layers) == 1 and second.layers[0].conv_pw.conv.out_channels == 24
    assert second.layers[0].drop.p == 0.0 and second.conv_res is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"C": 0}, "C must be a positive integer"),
        ({"kernels": (33, 33)}, "kernels must list 7 widths"),
        ({"blocks": []}, "blocks must hold at least one block"),
        ({"blocks": [{"type": "lstm", "filters": 8, "kernel": 3}]}, r"blocks\[0\].type must be"),
        ({"blocks": [{"type": "ib", "filters": 8, "kernel": 3, "groups": 2}]}, r"unknown keys \['groups'\]"),
        ({"blocks": [{"type": "conv", "filters": 8}]}, r"blocks\[0\] \(conv\) needs the key 'kernel'"),
        (
            {"blocks": [{"type": "conv", "filters": 8, "kernel": 3}, {"type": "ib", "kernel": 3}]},
            r"blocks\[1\] \(ib\) needs the key 'filters'",
        ),
    ],
)
def test_bad_configuration_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IBNetEncoder(feat_in=64, **kwargs)


@pytest.mark.parametrize("strides", ["[2,1,1,1,1,1,1]", "[2,1,2,1,2,1,1]"])  # the published 2x, and 8x
def test_onnx_and_torchscript_export_match_pytorch(tmp_path, strides):
    import onnxruntime

    model = tiny_ibnet_model(f"++model.encoder.strides={strides}").eval()
    features, lengths = torch.randn(2, 64, 301), torch.tensor([301, 200])
    with torch.no_grad():
        encoded, _ = model.encoder(audio_signal=features, length=lengths)
        expected = model.decoder(encoder_output=encoded).numpy()
    assert encoded.shape[-1] == {"[2,1,1,1,1,1,1]": 151, "[2,1,2,1,2,1,1]": 38}[strides]  # ceil(301 / 2), / 8

    model.export(str(tmp_path / "ibnet.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "ibnet.onnx"))
    onnx_logprobs = session.run(None, {"audio_signal": features.numpy(), "length": lengths.numpy()})[0]
    np.testing.assert_allclose(onnx_logprobs, expected, rtol=1e-4, atol=1e-4)

    model.export(str(tmp_path / "ibnet.ts"))
    scripted = torch.jit.load(str(tmp_path / "ibnet.ts"))
    np.testing.assert_allclose(scripted(features, lengths).numpy(), expected, rtol=1e-4, atol=1e-4)
