"""Grid search of beam width, LM weight (alpha) and word bonus (beta) for CTC beam search with a word n-gram LM.

    python examples/eval_beamsearch_ngram_ctc.py nemo_model_file=ibnet.nemo input_manifest=dev_clean.json \\
        kenlm_model_file=lm.arpa beam_width=[32,128] beam_alpha=[0.5,1.0,1.5] beam_beta=[0.0,1.0] \\
        preds_output_folder=lm_search

The acoustic model runs once; its log-probabilities are cached (`probs_cache_file`, default inside
`preds_output_folder`, keyed by model and manifest). Prints the best setting and its WER beside greedy decoding's,
and the results file's name. Exit status: 0 done, 2 bad options. See docs/transcription.md.
"""

import sys

from nemo.core.config import hydra_runner

from ibnet_nemo.cli import run_script
from ibnet_nemo.grid_search import GridSearchConfig, run_grid_search


@hydra_runner(config_name="GridSearchConfig", schema=GridSearchConfig)
def main(cfg: GridSearchConfig) -> None:
    def grid_search() -> int:
        best, greedy_wer, results_path = run_grid_search(cfg)
        print(f"Greedy WER {100 * greedy_wer:.2f}%")
        print(
            f"Best: beam_width={best.beam_width} beam_alpha={best.alpha} beam_beta={best.beta} "
            f"WER {100 * best.wer:.2f}% CER {100 * best.cer:.2f}%"
        )
        print(f"Results: {results_path.resolve()}")
        return 0

    sys.exit(run_script(grid_search, cfg.debug))


if __name__ == "__main__":
    main()
