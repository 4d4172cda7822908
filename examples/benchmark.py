"""Benchmark IBNet against NeMo's QuartzNet on this machine: one table (markdown + JSON) and a plot.

    python examples/benchmark.py                 # full run, results in ./benchmark_results/
    python examples/benchmark.py --quick         # smoke test with tiny batches
    python examples/benchmark.py --models "QuartzNet 5x5" "IBNet C=192" --output-dir /tmp/bench
    python examples/benchmark.py --device cuda --autocast bfloat16 --output-dir /tmp/bench_bf16
    python examples/benchmark.py --quantize int8   # an int8 row (CPU) next to every fp32 row

What is timed and how memory is measured: see ``ibnet_nemo/benchmark.py`` and docs/speed.md.
"""

import argparse
import dataclasses
from pathlib import Path

from ibnet_nemo.benchmark import AUTOCAST_DTYPES, BASELINE, DEVICES, FULL, MODELS, QUICK, run_benchmark, write_report
from ibnet_nemo.quantize import QUANTIZATIONS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    labels = [spec.label for spec in MODELS]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny batches and one or two rounds: a smoke test")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=labels,
        default=labels,
        help=f"models to run; must include the baseline {BASELINE!r} (default: all)",
    )
    parser.add_argument("--threads", type=int, default=FULL.threads, help="torch threads (default: %(default)s)")
    parser.add_argument("--device", choices=DEVICES, default=FULL.device, help="where to run (default: %(default)s)")
    parser.add_argument(
        "--autocast",
        choices=sorted(AUTOCAST_DTYPES),
        default=None,
        help="run the forward under torch.autocast with this dtype (default: fp32)",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default=None,
        help="also time every model quantized this way (CPU, inference only; default: fp32 only)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("benchmark_results"),
        help="where benchmark.{md,json,png} go (default: %(default)s)",
    )
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="shipped configs (default: %(default)s)")
    args = parser.parse_args()
    if BASELINE not in args.models:
        parser.error(f"--models must include the baseline {BASELINE!r}")

    try:
        settings = dataclasses.replace(
            QUICK if args.quick else FULL,
            threads=args.threads,
            device=args.device,
            autocast_dtype=args.autocast,
            quantize=args.quantize,
        )
    except ValueError as error:
        parser.error(str(error))
    specs = [spec for spec in MODELS if spec.label in args.models]
    results = run_benchmark(args.config_dir, specs, settings)
    paths = write_report(results, settings, args.output_dir)
    print(paths["md"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
