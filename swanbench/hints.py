"""The did-you-mean hint every one-line error in swanbench ends with."""

from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(word: object, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """`; did you mean 'x'?` for the closest of `choices` to `word`, or "" when none is close."""
    close = difflib.get_close_matches(str(word), sorted(str(c) for c in choices), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""
