"""Why a measurement is missing, in one line: the text of the meter's `*_error` and `measure_errors` columns."""

from __future__ import annotations

# A CSV cell is read by people: some torch assertions print whole data structures (the memory profiler's
# "version mismatch" prints every tensor edge of the op), so a reason is cut to this many characters.
MAX_CHARS = 300


def one_line(reason: BaseException | str) -> str:
    """`ExceptionType: message` for an exception (a string is taken as is), whitespace collapsed, cut short."""
    text = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
    text = " ".join(text.split())
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS - 3] + "..."
