"""Run any Python script (NeMo's own included) with the IBNet plugin registered.

    python -m ibnet_nemo path/to/transcribe_speech.py model_path=ibnet.nemo audio_dir=wavs/

NeMo refuses to instantiate a ``_target_`` outside its allow-list; NeMo's stock scripts never import this
package, so they cannot build or restore an IBNet model on their own. This launcher imports the plugin (which
registers it) and then runs the script as ``__main__`` with the remaining arguments.
"""

import runpy
import sys

import ibnet_nemo  # noqa: F401  (registers the plugin)

USAGE = "usage: python -m ibnet_nemo SCRIPT.py [ARG ...]"


def main(argv: list[str]) -> int:
    """Run ``argv[0]`` as a script with ``argv[1:]`` as its arguments."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
