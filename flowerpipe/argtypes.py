"""argparse types that turn a bad number into one usage line."""

from __future__ import annotations

import argparse


def number(kind: type, least: float, most: float | None = None):
    """An argparse type: a number of `kind` from `least` (to `most`), or one clear usage error."""
    what = "an integer" if kind is int else "a finite number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not least <= value <= (float("inf") if most is None else most) or value == float("inf"):  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what} " +
                                             (f">= {least:g}" if most is None else f"from {least:g} to {most:g}"))
        return value

    return parse
