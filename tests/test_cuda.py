"""IBNet on a CUDA GPU: the fast path against the plain reference in fp32 and under bf16 autocast, padded batches,
and the benchmark on CUDA (NeMo training in ``bf16-mixed``, on the CPU and a GPU, is in test_training.py). Skipped
where no GPU is present (CI has none); the runs on a lent GPU are recorded in docs/speed.md.
"""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIG_DIR, randomize_batchnorm
from nemo.collections.asr.models import EncDecCTCModel

from ibnet_nemo.benchmark import BenchmarkSettings, ModelSpec, build_model, run_benchmark

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

IBNET_C192 = ModelSpec("IBNet C=192", "ibnet_c192")
SECONDS = (5.0, 3.8, 1.9)  # one padded batch of three utterances


@pytest.fixture(autouse=True)
def _true_fp32():
    """Plain fp32 on the GPU: no TF32 in matrix products or cuDNN convolutions (PyTorch allows it for
    convolutions by default), so that 1e-4 relative is a meaningful bar."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _models() -> tuple[EncDecCTCModel, EncDecCTCModel]:
    """IBNet C=192 with non-trivial BatchNorm statistics, on the GPU in eval mode: fast path and reference."""
    torch.manual_seed(0)
    model = build_model(CONFIG_DIR, IBNET_C192)
    randomize_batchnorm(model.encoder)
    reference = build_model(CONFIG_DIR, IBNET_C192)
    reference.load_state_dict(model.state_dict())
    reference.encoder.fast = False
    return model.cuda().eval(), reference.cuda().eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """`(3, samples)` audio on the GPU, zero past each utterance's length, and its `(3,)` lengths."""
    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([int(s * 16000) for s in SECONDS])
    audio = 0.1 * torch.randn(len(SECONDS), int(lengths.max()), generator=generator)
    audio[torch.arange(audio.shape[1])[None, :] >= lengths[:, None]] = 0.0
    return audio.cuda(), lengths.cuda()


def _relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest absolute expected value."""
    return float((value.float() - expected.float()).abs().max() / expected.float().abs().max())


def test_fast_path_equals_reference_in_fp32_with_identical_greedy_predictions():
    model, reference = _models()
    audio, lengths = _batch()
    with torch.inference_mode():
        log_probs, encoded_len, greedy = model(input_signal=audio, input_signal_length=lengths)
        expected, expected_len, expected_greedy = reference(input_signal=audio, input_signal_length=lengths)
    torch.testing.assert_close(encoded_len, expected_len)
    assert _relative_error(log_probs, expected) < 1e-4
    for b, length in enumerate(expected_len.tolist()):
        assert torch.equal(greedy[b, :length], expected_greedy[b, :length]), b


def test_padded_batch_equals_each_utterance_alone():
    model, _ = _models()
    audio, lengths = _batch()
    with torch.inference_mode():
        alone = [
            model.preprocessor(input_signal=audio[b : b + 1, :n], length=lengths[b : b + 1])
            for b, n in enumerate(lengths.tolist())
        ]
        frames = max(features.shape[-1] for features, _ in alone)
        batch = torch.full((len(alone), alone[0][0].shape[1], frames), 1e3, device="cuda")  # padding holds garbage
        for b, (features, _) in enumerate(alone):
            batch[b, :, : features.shape[-1]] = features[0]
        feature_lengths = torch.cat([length for _, length in alone])
        encoded, encoded_len = model.encoder(audio_signal=batch, length=feature_lengths)
        for b, (features, length) in enumerate(alone):
            single, single_len = model.encoder(audio_signal=features, length=length)
            assert int(single_len) == int(encoded_len[b])
            assert _relative_error(encoded[b, :, : int(single_len)], single[0, :, : int(single_len)]) < 1e-5, b


def test_bf16_autocast_stays_close_to_the_fp32_reference_and_trains():
    model, reference = _models()
    audio, lengths = _batch()
    encoder_dtypes = []
    model.encoder.register_forward_hook(lambda module, args, output: encoder_dtypes.append(output[0].dtype))
    with torch.inference_mode():
        expected, _, expected_greedy = reference(input_signal=audio, input_signal_length=lengths)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            log_probs, encoded_len, greedy = model(input_signal=audio, input_signal_length=lengths)
    assert encoder_dtypes == [torch.bfloat16]
    error = _relative_error(log_probs, expected)
    assert error < 5e-2, error
    # Greedy labels must agree wherever the reference's best label leads the runner-up by more than the error.
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1] > 2 * error * expected.abs().max()) & (
        torch.arange(expected.shape[1], device="cuda")[None, :] < encoded_len[:, None]
    )
    assert clear.sum() > 0
    assert torch.equal(greedy[clear], expected_greedy[clear])

    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        log_probs, encoded_len, _ = model(input_signal=audio, input_signal_length=lengths)
    targets = torch.randint(0, 28, (len(SECONDS), 20), device="cuda")
    loss = model.loss(
        log_probs=log_probs.float(),
        targets=targets,
        input_lengths=encoded_len,
        target_lengths=torch.full((len(SECONDS),), 20, device="cuda"),
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.encoder.parameters())


@pytest.mark.parametrize("autocast_dtype", [None, "bfloat16"])
def test_benchmark_runs_on_cuda(autocast_dtype):
    settings = BenchmarkSettings(
        inference_shapes=((1, 2.0),),
        train_shape=(2, 1.0),
        inference_rounds=1,
        train_rounds=1,
        device="cuda",
        autocast_dtype=autocast_dtype,
    )
    specs = (ModelSpec("QuartzNet 5x5", "quartznet_5x5"), IBNET_C192)
    results = run_benchmark(CONFIG_DIR, specs, settings)
    assert all(r.rtfx["1x2s"] > 0 and r.train_step_s > 0 and r.train_peak_mib > 0 for r in results)
