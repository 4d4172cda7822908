"""Train a CTC speech recognizer (IBNet or QuartzNet) with NeMo from one of the configs in ``configs/``.

    python examples/speech_to_text_ctc.py --config-path=../configs --config-name=ibnet_c192 \
        model.train_ds.manifest_filepath=train.json model.validation_ds.manifest_filepath=dev.json

Any config key can be overridden on the command line (``trainer.devices=2``, ``model.optim.lr=0.01``,
``augment=speed_perturb``, ...). Running the same command again resumes a stopped run from its last complete
checkpoint. Manifests are checked before training; see docs/recipes.md.
"""

import sys

from nemo.core.config import hydra_runner
from nemo.utils.get_rank import is_global_rank_zero
from omegaconf import DictConfig

import ibnet_nemo  # noqa: F401  (registers the IBNet encoder with NeMo)
from ibnet_nemo.data.manifest_check import ManifestCheckError
from ibnet_nemo.training import NonFiniteLossError, train


@hydra_runner(config_path="../configs", config_name="ibnet_c192")
def main(cfg: DictConfig) -> None:
    try:
        outputs = train(cfg)
    except (ManifestCheckError, NonFiniteLossError) as error:
        print(f"Training stopped: {error}", file=sys.stderr)
        sys.exit(1)
    if is_global_rank_zero():
        print(f"Logs: {outputs.log_dir}")
        print(f"Checkpoints (last, best by val_wer, snapshots): {outputs.checkpoint_dir}")
        print(f"Final model: {outputs.nemo_file}")


if __name__ == "__main__":
    main()
