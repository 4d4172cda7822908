"""Sub-word IBNet: the SentencePiece tokenizer builder and its script, the BPE recipe trained, saved, restored in
a fresh process and used by the inference scripts, beam search with a word ARPA, export, and the manifest check
counting pieces."""

from __future__ import annotations

import csv
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import soundfile as sf
import torch
import yaml
from conftest import NO_DATA, REPO, SAMPLE_RATE, compose
from conftest import TINY_VOCAB_SIZE as VOCAB_SIZE
from nemo.collections.asr.models import EncDecCTCModelBPE
from nemo.collections.common.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer

from ibnet_nemo.data.manifest import read_manifest, write_manifest
from ibnet_nemo.data.manifest_check import OUT_OF_VOCABULARY, TOO_SHORT, SubwordUnits, check_manifest
from ibnet_nemo.data.tokenizer import TOKENIZER_FILES, build_tokenizer
from ibnet_nemo.inference import decode_log_probs, load_model, output_characters, set_decoding
from ibnet_nemo.lm.arpa import build_arpa

TINY_BPE_IBNET = ["model.encoder.C=16", "model.encoder.repeat=1", "model.encoder.kernels=[11,11,11,13,13,15,15]"]


def _pieces(tokenizer_dir: Path) -> list[str]:
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_tokenizer) -> Path:
    return tiny_tokenizer


@pytest.fixture(scope="module")
def bpe_model(tokenizer_dir) -> EncDecCTCModelBPE:
    torch.manual_seed(0)
    cfg = compose("ibnet_c192_bpe", [f"model.tokenizer.dir={tokenizer_dir}", *NO_DATA, *TINY_BPE_IBNET])
    return EncDecCTCModelBPE(cfg=cfg.model).eval()


def test_tokenizer_folder_is_what_nemo_loads(tokenizer_dir, tiny_data, bpe_model):
    root = tokenizer_dir.parent
    assert tokenizer_dir.name == f"tokenizer_spe_bpe_v{VOCAB_SIZE}"
    assert sorted(path.name for path in tokenizer_dir.iterdir()) == sorted(TOKENIZER_FILES)
    texts = [record["text"] for record in read_manifest(tiny_data["train"])]
    assert (root / "text_corpus" / "document.txt").read_text().splitlines() == texts
    pieces = _pieces(tokenizer_dir)
    assert len(pieces) == VOCAB_SIZE and pieces[0] == "<unk>"
    # NeMo's vocab.txt: every piece but <unk>, "▁x" written "x" and a word-inner "x" written "##x".
    assert (tokenizer_dir / "vocab.txt").read_text().splitlines() == [
        piece[1:] or piece if piece.startswith("\u2581") else f"##{piece}" for piece in pieces[1:]
    ]
    # The model built from configs/ibnet_c192_bpe.yaml takes its classes from the tokenizer.
    assert bpe_model.tokenizer.vocab_size == VOCAB_SIZE
    assert list(bpe_model.decoder.vocabulary) == pieces
    assert bpe_model.decoder.num_classes_with_blank == VOCAB_SIZE + 1
    assert bpe_model.encoder.subsampling_factor == 8


@pytest.mark.parametrize("lower_case", [True, False])
def test_lower_case_folds_the_pieces(lower_case, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("Hello World\nONE two Three\n")
    folder = build_tokenizer(tmp_path, 100, data_file=text, spe_type="char", lower_case=lower_case)
    letters = {piece for piece in _pieces(folder) if piece.isalpha()}
    assert letters == (set("helowrdnt") if lower_case else set("HeloWrdONEtwTh"))
    tokenizer = SentencePieceTokenizer(model_path=str(folder / "tokenizer.model"))
    assert (tokenizer.text_to_ids("HELLO") == tokenizer.text_to_ids("hello")) == lower_case


def test_vocab_size_too_large_for_the_text_is_an_error(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("one two three\n")
    with pytest.raises(
        ValueError,
        match=r"vocab_size=500 is too large for this text: SentencePiece made only \d+ "
        r"bpe pieces .* use a vocab_size of at most \d+",
    ):
        build_tokenizer(tmp_path / "out", 500, data_file=text)
    assert not (tmp_path / "out" / "tokenizer_spe_bpe_v500").exists()
    with pytest.raises(ValueError, match="exactly one of manifests and data_file"):
        build_tokenizer(tmp_path / "out", 8)


def test_script_takes_nemos_arguments(tiny_data, tokenizer_dir, tmp_path):
    run = _script(
        "process_asr_text_tokenizer.py",
        f"--manifest={tiny_data['train']},{tiny_data['val']}",
        "--data_root=tokenizers",
        f"--vocab_size={VOCAB_SIZE}",
        "--tokenizer=spe",
        "--spe_type=bpe",
        "--spe_character_coverage=1.0",
        "--lower_case",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    folder = tmp_path / "tokenizers" / f"tokenizer_spe_bpe_v{VOCAB_SIZE}"
    assert run.stdout.strip().endswith(f"Serialized tokenizer at location : {folder.relative_to(tmp_path)}")
    records = [*read_manifest(tiny_data["train"]), *read_manifest(tiny_data["val"])]
    assert len((tmp_path / "tokenizers" / "text_corpus" / "document.txt").read_text().splitlines()) == len(records)
    assert len(_pieces(folder)) == VOCAB_SIZE

    too_large = _script(
        "process_asr_text_tokenizer.py",
        f"--manifest={tiny_data['train']}",
        "--data_root=big",
        "--vocab_size=5000",
        "--tokenizer=spe",
        cwd=tmp_path,
    )
    assert too_large.returncode == 1 and "Traceback" not in too_large.stderr
    assert "error: vocab_size=5000 is too large for this text" in too_large.stderr


def test_recipe_trains_saves_and_the_nemo_file_restores_and_transcribes_elsewhere(tiny_data, tokenizer_dir, tmp_path):
    # The documented commands: the tokenizer's folder, then training; 16 utterances in batches of 8 = 2 steps.
    local_tokenizer = tmp_path / "tokenizer"
    local_tokenizer.mkdir()
    for name in TOKENIZER_FILES:
        (local_tokenizer / name).write_bytes((tokenizer_dir / name).read_bytes())
    run = _script(
        "speech_to_text_ctc.py",
        "--config-path=../configs",
        "--config-name=ibnet_c192_bpe",
        f"model.tokenizer.dir={local_tokenizer}",
        f"model.train_ds.manifest_filepath={tiny_data['train']}",
        f"model.validation_ds.manifest_filepath={tiny_data['val']}",
        f"exp_manager.exp_dir={tmp_path}",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "model.train_ds.batch_size=8",
        "model.train_ds.num_workers=0",
        "model.validation_ds.num_workers=0",
        "augment=none",
        *TINY_BPE_IBNET,
        cwd=tmp_path,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    nemo_file = tmp_path / "ibnet_c192_bpe" / "checkpoints" / "ibnet_c192_bpe.nemo"
    assert f"Final model: {nemo_file}" in output
    assert "Manifest check:" in output and "16 records, 16 kept" in output
    (last,) = nemo_file.parent.glob("*-last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2
    with tarfile.open(nemo_file) as archive:
        names = {Path(name).name for name in archive.getnames()}
        config = yaml.safe_load(archive.extractfile("./model_config.yaml"))
    assert config["target"].endswith(".EncDecCTCModelBPE") and config["encoder"]["strides"] == [2, 1, 2, 1, 2, 1, 1]
    assert any(name.endswith("_tokenizer.model") for name in names)  # the tokenizer travels in the .nemo

    # Elsewhere: without the tokenizer folder, in fresh processes: the inference scripts and the launcher.
    for name in TOKENIZER_FILES:
        (local_tokenizer / name).unlink()
    run = _script(
        "transcribe_speech.py",
        f"model_path={nemo_file}",
        f"dataset_manifest={tiny_data['val']}",
        "output_filename=transcripts.json",
        "cuda=-1",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    transcripts = list(read_manifest(tmp_path / "transcripts.json"))
    assert len(transcripts) == 6 and all(isinstance(record["pred_text"], str) for record in transcripts)
    assert "Transcribed 6 of 6 inputs" in run.stdout

    # A script that does not import the plugin (as NeMo's own), through the launcher.
    audio = [record["audio_filepath"] for record in read_manifest(tiny_data["val"])]
    stock_script = tmp_path / "stock_script.py"
    stock_script.write_text(
        textwrap.dedent(f"""
        from nemo.collections.asr.models import ASRModel
        model = ASRModel.restore_from({str(nemo_file)!r}, map_location="cpu")
        texts = [h.text for h in model.transcribe({audio!r}, batch_size=4, verbose=False)]
        print(f"RESTORED {{type(model).__name__}} {{len(texts)}}")
    """)
    )
    run = subprocess.run(
        [sys.executable, "-m", "ibnet_nemo", str(stock_script)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "RESTORED EncDecCTCModelBPE 6" in run.stdout

    lm = build_arpa([record["text"] for record in read_manifest(tiny_data["train"])], tmp_path / "words.arpa")
    run = _script(
        "eval_beamsearch_ngram_ctc.py",
        f"nemo_model_file={nemo_file}",
        f"input_manifest={tiny_data['val']}",
        f"kenlm_model_file={lm}",
        "beam_width=[4]",
        "beam_alpha=[0.5,1.0]",
        "beam_beta=[0.0]",
        "preds_output_folder=search",
        "acoustic_batch_size=4",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    with open(tmp_path / "search" / "grid_search_results.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [row["decoding"] for row in rows] == ["greedy", "beam+lm", "beam+lm"]
    assert all(0.0 <= float(row["wer"]) for row in rows)


def _frames(model: EncDecCTCModelBPE, text: str, length: int) -> list[int]:
    """The token ids of ``text``, each followed by a blank, padded with blanks to ``length`` frames."""
    blank = len(model.decoder.vocabulary)
    frames = [frame for token in model.tokenizer.text_to_ids(text) for frame in (token, blank)]
    return frames + [blank] * (length - len(frames))


def test_beam_search_with_a_word_arpa_finds_words_at_the_word_boundary_pieces(bpe_model, tmp_path):
    # Two readings, frame by frame: "three fine" (0.6, spelled ▁t hree ▁f i n e) and "three five" (0.4,
    # ▁t hree ▁five). Greedy takes the likelier pieces; the word LM knows "five" and not "fine".
    likely, known = "three fine", "three five"
    length = 2 * max(len(bpe_model.tokenizer.text_to_ids(text)) for text in (likely, known)) + 2
    probs = np.full((length, len(bpe_model.decoder.vocabulary) + 1), 1e-4)
    for frame, (token_likely, token_known) in enumerate(
        zip(_frames(bpe_model, likely, length), _frames(bpe_model, known, length))
    ):
        probs[frame, token_likely] += 0.6
        probs[frame, token_known] += 0.4
    log_probs = np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

    set_decoding(bpe_model, {"strategy": "greedy_batch"})
    assert decode_log_probs(bpe_model, [log_probs]) == [likely]
    lm = build_arpa(["three five", "five three", "one two"], tmp_path / "words.arpa")
    set_decoding(
        bpe_model,
        {
            "strategy": "pyctcdecode",
            "beam": {"beam_size": 8, "ngram_lm_model": str(lm), "ngram_lm_alpha": 1.0, "beam_beta": 0.0},
        },
    )
    assert decode_log_probs(bpe_model, [log_probs]) == [known]
    set_decoding(bpe_model, {"strategy": "greedy_batch"})


def test_lm_check_reads_the_characters_of_the_pieces(bpe_model, tmp_path):
    assert output_characters(bpe_model) == set(" efhilnorstuvwy")  # "▁" is the space; "<unk>" spells nothing
    upper = build_arpa(["THREE FIVE"], tmp_path / "upper.arpa")
    with pytest.raises(ValueError, match="none of its 2 words is spelled with the model's characters"):
        set_decoding(bpe_model, {"strategy": "pyctcdecode", "beam": {"ngram_lm_model": str(upper)}})


def test_nemo_file_of_a_bpe_model_loads_and_exports(bpe_model, tmp_path):
    import onnxruntime

    path = tmp_path / "bpe.nemo"
    bpe_model.save_to(str(path))
    restored = load_model(path, cuda=-1)
    assert isinstance(restored, EncDecCTCModelBPE)
    features, lengths = torch.randn(2, 64, 301), torch.tensor([301, 200])
    with torch.no_grad():
        encoded, encoded_lengths = restored.encoder(audio_signal=features, length=lengths)
        expected = restored.decoder(encoder_output=encoded).numpy()
    assert encoded_lengths.tolist() == [38, 25]  # ceil(301 / 8), ceil(200 / 8)
    restored.export(str(tmp_path / "bpe.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "bpe.onnx"), providers=["CPUExecutionProvider"])
    onnx_log_probs = session.run(None, {"audio_signal": features.numpy(), "length": lengths.numpy()})[0]
    assert onnx_log_probs.shape == (2, 38, VOCAB_SIZE + 1)
    np.testing.assert_allclose(onnx_log_probs, expected, rtol=1e-4, atol=1e-4)


def test_a_bpe_model_runs_int8(bpe_model, tmp_path):
    path = tmp_path / "bpe.nemo"
    bpe_model.save_to(str(path))
    fp32, int8 = load_model(path, cuda=-1), load_model(path, cuda=-1, quantize="int8")
    assert isinstance(int8, EncDecCTCModelBPE) and int8.encoder.int8_engine is not None
    features, lengths = torch.randn(2, 64, 301), torch.tensor([301, 200])
    with torch.no_grad():
        reference, reference_lengths, _ = fp32(processed_signal=features, processed_signal_length=lengths)
        quantized, quantized_lengths, _ = int8(processed_signal=features, processed_signal_length=lengths)
    assert torch.equal(reference_lengths, quantized_lengths)
    error = (reference - quantized)[:, :25].abs().amax(-1)  # both utterances' valid frames
    # Untrained, its BatchNorm statistics do not describe its activations, so int8's fixed ranges fit loosely:
    # measured 0.08 of the spread of the log-probabilities.
    assert (error / (reference.amax(-1) - reference.amin(-1))[:, :25]).max() < 0.15


def test_manifest_check_counts_pieces_and_keeps_case_to_the_tokenizer(tokenizer_dir, tmp_path):
    # 0.2 s: 3200 // 160 + 1 = 21 mel frames, ceil(21 / 8) = 3 encoder frames at 8x.
    audio = tmp_path / "short.wav"
    sf.write(audio, np.zeros(3200, dtype=np.float32), SAMPLE_RATE)
    texts = ["five  five", "FIVE", "fine", "f\u00f6ve"]
    manifest = write_manifest(
        tmp_path / "train.json", [{"audio_filepath": str(audio), "duration": 0.2, "text": text} for text in texts]
    )
    units = SubwordUnits(SentencePieceTokenizer(model_path=str(tokenizer_dir / "tokenizer.model")))
    report = check_manifest(manifest, None, SAMPLE_RATE, 160, 8, tmp_path / "cleaned", 1.0, subwords=units)
    # "five five": 9 characters, but the pieces ▁five ▁five and a blank between them fit 3 frames;
    # "fine" (▁f i n e) needs 4; "ö" is spelled <unk>.
    assert (report.kept, report.dropped[TOO_SHORT], report.dropped[OUT_OF_VOCABULARY]) == (2, 1, 1)
    assert report.out_of_vocabulary == {"\u00f6": 1}
    assert [record["text"] for record in read_manifest(report.cleaned_manifest)] == ["five five", "FIVE"]
    assert report.normalized == 1 and "normalized 1 transcripts (single spaces)" in report.format()
    with pytest.raises(ValueError, match="exactly one of labels"):
        check_manifest(manifest, list(" abc"), SAMPLE_RATE, 160, 8, tmp_path, 1.0, subwords=units)
