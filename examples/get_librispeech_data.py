"""Make NeMo manifests for LibriSpeech (train-clean-100, dev-clean, dev-other, test-clean, test-other).

    python examples/get_librispeech_data.py --data_root=data --source=/datasets/librispeech   # tarballs or folders
    python examples/get_librispeech_data.py --data_root=data --download                       # from openslr.org

Writes ``<data_root>/train_clean_100.json``, ``dev_clean.json``, ... with absolute FLAC paths and lower-case
transcripts; prints each manifest's path and size.
"""

import argparse

from ibnet_nemo.data.librispeech import LIBRISPEECH_URL, SUBSETS, prepare_librispeech


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True, help="where manifests (and extracted audio) go")
    parser.add_argument(
        "--data_sets",
        default=",".join(SUBSETS),
        help="comma-separated subsets, `_` or `-` spelling (default: %(default)s)",
    )
    parser.add_argument("--source", help="folder with <subset>.tar.gz files or an extracted LibriSpeech/ tree")
    parser.add_argument("--download", action="store_true", help="download subsets found nowhere else")
    parser.add_argument("--url", default=LIBRISPEECH_URL, help="download URL template (default: %(default)s)")
    args = parser.parse_args()
    subsets = [name.strip().replace("_", "-") for name in args.data_sets.split(",")]
    prepare_librispeech(args.data_root, subsets, source=args.source, url_template=args.url if args.download else None)


if __name__ == "__main__":
    main()
