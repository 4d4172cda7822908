"""What the example scripts share: a problem with the options is one ``error:`` line and exit status 2."""

from __future__ import annotations

import sys
from typing import Callable

__all__ = ["one_line", "run_script"]


def run_script(main: Callable[[], int], debug: bool) -> int:
    """Run a script's ``main`` and turn a problem with its options into one ``error:`` line and exit status 2.

    ``FileNotFoundError`` and ``ValueError`` (bad model path, inputs, LM, manifest) are printed without a
    traceback unless ``debug`` is set; anything else propagates as the bug it is.
    """
    try:
        return main()
    except (FileNotFoundError, ValueError) as error:
        if debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """The message of ``error`` with its whitespace runs (newlines included) collapsed; its type when empty."""
    return " ".join(str(error).split()) or type(error).__name__
