"""Transcribe audio with a CTC model (IBNet or any NeMo CTC model), greedily or with an n-gram LM.

    python examples/transcribe_speech.py model_path=ibnet.nemo audio_dir=wavs/ output_filename=out.json
    python examples/transcribe_speech.py model_path=ibnet.nemo dataset_manifest=dev.json \\
        ctc_decoding.strategy=pyctcdecode ctc_decoding.beam.ngram_lm_model=lm.arpa \\
        ctc_decoding.beam.ngram_lm_alpha=0.5 ctc_decoding.beam.beam_beta=1.0 ctc_decoding.beam.beam_size=64
    python examples/transcribe_speech.py model_path=ibnet.nemo audio_filepath=one.wav
    python examples/transcribe_speech.py model_path=ibnet.nemo audio_filepath=meeting.wav timestamps=true \\
        output_format=srt

Every input gets one record in the output manifest: `pred_text`, or `error` with the reason. Inputs longer than
`total_buffer_in_secs` run in chunks of `chunk_len_in_secs`. `timestamps=true` adds NeMo's `word` and
`segment` lists; `output_format=srt|vtt|ctm` writes one such file per input beside the output. Exit status: 0 all
transcribed, 1 some inputs failed, 2 bad options. `debug=true` shows tracebacks. See docs/transcription.md.
"""

import sys

from nemo.core.config import hydra_runner

from ibnet_nemo.cli import run_script
from ibnet_nemo.transcribe import TranscriptionConfig, run_transcription


@hydra_runner(config_name="TranscriptionConfig", schema=TranscriptionConfig)
def main(cfg: TranscriptionConfig) -> None:
    def transcribe() -> int:
        summary = run_transcription(cfg)
        print(summary)
        return 1 if summary.failed else 0

    sys.exit(run_script(transcribe, cfg.debug))


if __name__ == "__main__":
    main()
