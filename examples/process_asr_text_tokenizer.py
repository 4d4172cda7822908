"""Build a SentencePiece tokenizer for a sub-word CTC model (``configs/ibnet_c192_bpe.yaml``), as NeMo's script.

    python examples/process_asr_text_tokenizer.py --manifest=data/train_clean_100.json \
        --data_root=data/tokenizers --vocab_size=256 --tokenizer=spe --spe_type=bpe

writes ``data/tokenizers/tokenizer_spe_bpe_v256/`` (``tokenizer.model``, ``tokenizer.vocab``, ``vocab.txt``), the
folder to pass as ``model.tokenizer.dir``. The arguments are those of NeMo's
``scripts/tokenizers/process_asr_text_tokenizer.py`` (not shipped in the NeMo wheel), SentencePiece (``spe``) only.
"""

import argparse
import sys

from ibnet_nemo.data.tokenizer import SPE_TYPES, build_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="comma-separated NeMo manifests whose `text` fields are the training text")
    source.add_argument("--data_file", help="text file, one sentence a line")
    parser.add_argument("--data_root", required=True, help="output folder (tokenizer_spe_<type>_v<size>/ goes in it)")
    parser.add_argument("--vocab_size", type=int, default=1024, help="pieces, <unk> included (default: %(default)s)")
    parser.add_argument("--tokenizer", default="spe", choices=["spe"], help="SentencePiece (default: %(default)s)")
    parser.add_argument("--spe_type", default="bpe", choices=SPE_TYPES, help="model type (default: %(default)s)")
    parser.add_argument(
        "--spe_character_coverage",
        type=float,
        default=1.0,
        help="1.0 for small alphabets, 0.9995 for Chinese or Japanese (default: %(default)s)",
    )
    parser.add_argument("--spe_sample_size", type=int, default=-1, help="sentences sampled, -1: all (default: -1)")
    parser.add_argument(
        "--spe_max_sentencepiece_length",
        type=int,
        default=-1,
        help="longest piece in characters, -1: no limit (default: -1)",
    )
    parser.add_argument(
        "--spe_train_extremely_large_corpus",
        action="store_true",
        help="SentencePiece's setting for corpora too large for its default limits",
    )
    parser.add_argument("--spe_bos", action="store_true", help="add <s>")
    parser.add_argument("--spe_eos", action="store_true", help="add </s>")
    parser.add_argument("--spe_pad", action="store_true", help="add <pad>")
    case = parser.add_mutually_exclusive_group()
    case.add_argument("--lower_case", dest="lower_case", action="store_true", help="fold case (the default)")
    case.add_argument("--no_lower_case", dest="lower_case", action="store_false", help="keep upper-case pieces")
    parser.set_defaults(lower_case=True)
    args = parser.parse_args()

    try:
        tokenizer_dir = build_tokenizer(
            args.data_root,
            args.vocab_size,
            manifests=args.manifest.split(",") if args.manifest else None,
            data_file=args.data_file,
            spe_type=args.spe_type,
            lower_case=args.lower_case,
            character_coverage=args.spe_character_coverage,
            sample_size=args.spe_sample_size,
            max_sentencepiece_length=args.spe_max_sentencepiece_length,
            bos=args.spe_bos,
            eos=args.spe_eos,
            pad=args.spe_pad,
            train_extremely_large_corpus=args.spe_train_extremely_large_corpus,
        )
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    print(f"Serialized tokenizer at location : {tokenizer_dir}")


if __name__ == "__main__":
    main()
