"""WER and CER of a CTC model on a manifest, greedily or with an n-gram LM.

    python examples/speech_to_text_eval.py model_path=ibnet.nemo dataset_manifest=dev_clean.json \\
        output_filename=dev_clean_transcripts.json
    (+ ctc_decoding.strategy=pyctcdecode ctc_decoding.beam.ngram_lm_model=lm.arpa ... for the LM;
     chunk_len_in_secs, total_buffer_in_secs for recordings longer than one buffer)

Writes the transcripts (one record per utterance, `pred_text` or `error`) and `<output stem>_metrics.json`, and
prints both names. Exit status: 0 all scored, 1 some utterances failed, 2 bad options. See docs/transcription.md.
"""

import sys

from nemo.core.config import hydra_runner

from ibnet_nemo.cli import run_script
from ibnet_nemo.evaluate import EvaluationConfig, run_evaluation


@hydra_runner(config_name="EvaluationConfig", schema=EvaluationConfig)
def main(cfg: EvaluationConfig) -> None:
    def evaluate() -> int:
        result = run_evaluation(cfg)
        print(result)
        return 1 if result.failed else 0

    sys.exit(run_script(evaluate, cfg.debug))


if __name__ == "__main__":
    main()
