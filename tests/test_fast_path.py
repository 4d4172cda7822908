"""The fast path computes what the reference path (plain Conv1d + BatchNorm1d) computes.

Blocks and the encoder, eval and train mode, forward and gradients, after weight changes (folded-weight cache),
with activation checkpointing, under CPU bf16 autocast, after `.nemo` save/restore, through ONNX/TorchScript
export, and as greedy transcripts.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import CONFIG_DIR, TINY_IBNET, randomize_batchnorm, small_encoder

from ibnet_nemo.benchmark import ModelSpec, build_model
from ibnet_nemo.modules import IBNetEncoder
from ibnet_nemo.parts.blocks import ConvBNAct, IBBlock, InvertedBottleneck, make_mask
from ibnet_nemo.parts.conv_bn import ConvBN, _depthwise_conv


def _fast_and_reference(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``module`` (BatchNorm randomized) with the fast path on, and a deep copy running the reference path."""
    randomize_batchnorm(module)
    reference = copy.deepcopy(module)
    for fast, m in ((True, module), (False, reference)):
        for conv in (c for c in m.modules() if isinstance(c, ConvBN)):
            conv.fast = fast
    return module, reference


def _forward_backward(module, x, mask):
    """Output, input gradient and parameter gradients of a fixed weighted sum of the output."""
    x = x.clone().requires_grad_(True)
    y = module(x, mask)
    weights = torch.linspace(-1, 1, y.numel()).view_as(y)
    (y * weights).sum().backward()
    return y.detach(), x.grad, {name: p.grad.clone() for name, p in module.named_parameters()}


def _assert_same_training_step(fast, reference, x, mask):
    y_fast, dx_fast, grads_fast = _forward_backward(fast, x, mask)
    y_ref, dx_ref, grads_ref = _forward_backward(reference, x, mask)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx_fast, dx_ref, rtol=1e-4, atol=1e-5)
    assert grads_fast.keys() == grads_ref.keys()
    for name in grads_ref:
        torch.testing.assert_close(grads_fast[name], grads_ref[name], rtol=1e-4, atol=1e-4, msg=name)
    for name, buffer in reference.state_dict().items():  # BatchNorm running statistics were updated alike
        torch.testing.assert_close(fast.state_dict()[name], buffer, rtol=1e-5, atol=1e-6, msg=name)
    return y_ref


BLOCKS = {
    "conv_stride2": lambda: ConvBNAct(6, 10, kernel_size=5, stride=2),
    "conv_1x1": lambda: ConvBNAct(6, 10, kernel_size=1),
    "ib_skip": lambda: InvertedBottleneck(8, 8, kernel_size=7),
    "ib_widen_dilated": lambda: InvertedBottleneck(8, 12, kernel_size=5, dilation=2, activation="silu"),
    "ib_block": lambda: IBBlock(8, 12, kernel_size=5, repeat=2),
    "ib_block_stride2": lambda: IBBlock(8, 12, kernel_size=5, repeat=2, stride=2),
}


def _block_input(block, time_steps: int = 23):
    in_channels = next(m for m in block.modules() if isinstance(m, ConvBN)).conv.in_channels
    x = torch.randn(3, in_channels, time_steps, generator=torch.Generator().manual_seed(1))
    return x, make_mask(torch.tensor([time_steps, 17, 9]), time_steps, x.dtype)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_fast_path_equals_reference_in_eval_mode(name):
    fast, reference = _fast_and_reference(BLOCKS[name]())
    fast.eval(), reference.eval()
    x, mask = _block_input(fast)
    with torch.inference_mode():  # activations in place, BatchNorm folded (and cached) on the fast path
        y_fast = fast(x, mask)
        torch.testing.assert_close(y_fast, reference(x, mask), rtol=1e-5, atol=1e-5)
    # eval mode with autograd on (fine-tuning with frozen BatchNorm): activations out of place, gradients
    # reach the unfolded weights
    y_ref = _assert_same_training_step(fast, reference, x, mask)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_fast_path_equals_reference_in_train_mode(name):
    fast, reference = _fast_and_reference(BLOCKS[name]())
    x, mask = _block_input(fast)
    _assert_same_training_step(fast.train(), reference.train(), x, mask)


def _features(lengths=(64, 51, 30)):
    lengths = torch.tensor(lengths)
    x = torch.randn(len(lengths), 16, int(lengths.max()), generator=torch.Generator().manual_seed(2))
    return x, lengths


def _encode(encoder, x, lengths):
    return encoder(audio_signal=x, length=lengths)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_encoder_fast_path_equals_reference(mode):
    fast, reference = _fast_and_reference(small_encoder())
    fast.train(mode == "train"), reference.train(mode == "train")
    x, lengths = _features()
    outputs, grads = [], []
    for encoder in (fast, reference):
        features = x.clone().requires_grad_(True)
        encoded, encoded_len = _encode(encoder, features, lengths)
        encoded.square().mean().backward()
        outputs.append((encoded.detach(), encoded_len))
        grads.append([features.grad] + [p.grad for p in encoder.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for grad_fast, grad_ref in zip(*grads):
        torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-4, atol=1e-5)
    assert fast.fast and not reference.fast


def _assert_fast_matches_reference(fast: IBNetEncoder, x, lengths):
    reference = copy.deepcopy(fast)
    reference.fast = False
    with torch.inference_mode():
        torch.testing.assert_close(_encode(fast, x, lengths), _encode(reference, x, lengths), rtol=1e-5, atol=1e-5)


def test_folded_weights_follow_every_change_of_the_weights():
    encoder, _ = _fast_and_reference(small_encoder())
    encoder.eval()
    x, lengths = _features()
    _assert_fast_matches_reference(encoder, x, lengths)  # fills the cache

    # load_state_dict: weights of another model
    other = small_encoder(seed=1)
    randomize_batchnorm(other, seed=1)
    encoder.load_state_dict(other.state_dict())
    _assert_fast_matches_reference(encoder, x, lengths)

    # an in-place update under no_grad (how torch optimizers step)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01)
    _assert_fast_matches_reference(encoder, x, lengths)

    # an optimizer writing through `.data` (no version bump, e.g. NeMo's Novograd) between train() and eval()
    encoder.train()
    for p in encoder.parameters():
        p.data.mul_(0.9)
    encoder.eval()
    _assert_fast_matches_reference(encoder, x, lengths)

    # another dtype
    encoder.double()
    _assert_fast_matches_reference(encoder, x.double(), lengths)


def test_checkpoint_blocks_gives_the_same_gradients_and_running_statistics():
    plain = small_encoder(dropout=0.2).train()
    randomize_batchnorm(plain)
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpoint_blocks = True
    x, lengths = _features()
    grads = []
    for encoder in (plain, checkpointed):
        torch.manual_seed(3)  # same dropout masks
        encoded, _ = _encode(encoder, x, lengths)
        (encoded * torch.linspace(-1, 1, encoded.shape[-1])).sum().backward()
        grads.append({name: p.grad for name, p in encoder.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=0, msg=name)
    for name, buffer in plain.state_dict().items():  # recomputation did not update running statistics twice
        torch.testing.assert_close(checkpointed.state_dict()[name], buffer, rtol=0, atol=0, msg=name)


def test_training_depthwise_backward_is_the_exact_gradient():
    """IBNet's own depth-wise backward (input: the kernel reversed; weight: a grouped convolution over the batch)
    against finite differences, and against PyTorch's backward of the same convolution."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(3, 8, 1, 20, dtype=torch.float64, generator=generator)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(8, 1, 1, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _depthwise_conv(a, b, 2), (x, weight))
    grad = torch.randn(3, 8, 1, 20, dtype=torch.float64, generator=generator)
    ours = torch.autograd.grad((_depthwise_conv(x, weight, 2) * grad).sum(), (x, weight))
    plain = torch.autograd.grad(
        (torch.nn.functional.conv2d(x, weight, padding=(0, 2), groups=8) * grad).sum(), (x, weight)
    )
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_bf16_autocast_stays_close_to_fp32_reference(mode):
    fast, reference = _fast_and_reference(small_encoder())
    fast.train(mode == "train"), reference.train(mode == "train")
    x, lengths = _features()
    expected, _ = _encode(reference, x, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoded, encoded_len = _encode(fast, x, lengths)
        encoded.float().square().mean().backward()
    assert encoded.dtype == torch.bfloat16
    error = (encoded.float() - expected).norm() / expected.norm()
    assert error < 3e-2, f"bf16 relative error {error:.3g}"
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters())


def test_exported_fast_encoder_matches_reference_on_a_padded_batch(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    encoder, _ = _fast_and_reference(small_encoder())
    encoder.eval()
    reference = copy.deepcopy(encoder)
    reference.fast = False
    x, lengths = _features()
    with torch.inference_mode():
        expected, expected_len = _encode(reference, x, lengths)
        _encode(encoder, x, lengths)  # a filled folded-weight cache must not leak into the export
    encoder.export(str(tmp_path / "encoder.ts"))
    scripted = torch.jit.load(str(tmp_path / "encoder.ts"))
    encoded, encoded_len = scripted(x, lengths)
    torch.testing.assert_close(encoded, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoded_len, expected_len)

    encoder.export(str(tmp_path / "encoder.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    encoded, _ = session.run(None, dict(zip(names, (x.numpy(), lengths.numpy()))))
    np.testing.assert_allclose(encoded, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_restored_model_fast_and_reference_agree_with_identical_greedy_transcripts(tmp_path, tiny_data):
    from nemo.collections.asr.models import EncDecCTCModel

    from ibnet_nemo.data.manifest import read_manifest

    model = build_model(CONFIG_DIR, ModelSpec("tiny IBNet", "ibnet_c192", TINY_IBNET)).eval()
    randomize_batchnorm(model.encoder)
    model.save_to(str(tmp_path / "tiny.nemo"))
    restored = EncDecCTCModel.restore_from(str(tmp_path / "tiny.nemo"), map_location="cpu").eval()
    assert restored.encoder.fast

    audio = torch.randn(2, 16000, generator=torch.Generator().manual_seed(4))
    audio_lengths = torch.tensor([16000, 11000])
    with torch.inference_mode():
        before, _, _ = model(input_signal=audio, input_signal_length=audio_lengths)
        after_fast, _, _ = restored(input_signal=audio, input_signal_length=audio_lengths)
        restored.encoder.fast = False
        after_reference, _, _ = restored(input_signal=audio, input_signal_length=audio_lengths)
    torch.testing.assert_close(after_fast, before, rtol=0, atol=0)
    torch.testing.assert_close(after_fast, after_reference, rtol=1e-5, atol=1e-5)

    files = [record["audio_filepath"] for record in read_manifest(tiny_data["val"])]
    reference_texts = [h.text for h in restored.transcribe(files, batch_size=4, verbose=False)]
    restored.encoder.fast = True
    fast_texts = [h.text for h in restored.transcribe(files, batch_size=4, verbose=False)]
    assert fast_texts == reference_texts
    assert any(reference_texts)  # random weights still emit characters: the comparison is not vacuous
