"""Files a user hands to swanbench (suites, tolerances, tokenizers) and folders it writes into: every problem
with one of them is one line naming the path, raised as the caller's own error class.

Why one place: a suite, a tolerances file and a tokenizer file fail in the same few ways (not UTF-8, not
the format, nested deeper than a parser's recursion, unreadable, a folder where a file should be), and an
output folder in a few others (an existing file, under a file, not writable). Each reader here turns every
one of them into `error(f"{path}: <problem>")`, so no decoding, recursion or OS error reaches the user as a
traceback, whichever file it was. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ErrorClass = Callable[[str], Exception]


def one_line(text: object, limit: int = 300) -> str:
    """`text` on one line (whitespace runs collapsed), cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def is_file(path: Path | str) -> bool:
    """Path.is_file, but False for a name the OS refuses (too long, a NUL byte) instead of an exception:
    a string that may be a file or a hub name (a tokenizer) is then a name."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def exists(path: Path | str) -> bool:
    """Path.exists, but False for a name the OS refuses (too long, a NUL byte) instead of an exception."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def read_text(path: Path, error: ErrorClass, what: str = "text") -> str:
    """The file's text (UTF-8); `error` with one line when it is missing, a folder, unreadable or not UTF-8."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 {what} (byte {exc.start}: {exc.reason})") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what} file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or one_line(exc)})") from None


def read_toml(path: Path, error: ErrorClass) -> dict[str, Any]:
    """A TOML document (parsed, never executed); `error` with one line for any file it cannot be."""
    text = read_text(path, error, "TOML")
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise error(f"{path}: not valid TOML (nested too deeply)") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError and its kin
        raise error(f"{path}: not valid TOML ({one_line(exc)})") from None


def read_json(path: Path, error: ErrorClass) -> Any:
    """A JSON document; `error` with one line for any file it cannot be."""
    text = read_text(path, error, "JSON")
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise error(f"{path}: not valid JSON ({one_line(exc)})") from None


def read_tokenizer(path: Path, error: ErrorClass):
    """A `tokenizers.Tokenizer` from a tokenizer.json; `error` with one line when the file is not one.

    The shape is checked first (a JSON object with a `model` table holding a `vocab`), so that a JSON list
    or a config file is named as such; then the tokenizers library itself parses it, the same call a run
    makes, so a file that passes here loads in the run.
    """
    blob = read_json(path, error)
    model = blob.get("model") if isinstance(blob, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), (dict, list)):
        raise error(f"{path}: not a tokenizer file (expected a tokenizer.json object with model.vocab)")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(json.dumps(blob))
    except Exception as exc:  # noqa: BLE001 - the Rust parser raises plain Exception for every shape error
        raise error(f"{path}: not a tokenizer file the tokenizers library can load ({one_line(exc)})") from None


def _first_existing(path: Path) -> Path:
    """`path` itself when it exists, else its nearest existing ancestor (or the current folder)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def output_dir_problem(path: Path, subdirs: tuple[str, ...] = (), files: tuple[str, ...] = ()) -> str | None:
    """Why `path` cannot be (or become) a folder this process writes into, or None. Creates nothing.

    A folder is fine when it exists and is writable, or when its nearest existing ancestor is a writable
    folder; `subdirs` (e.g. "runs") must be folders and `files` (e.g. "runs.csv") files where they exist.
    """
    path = Path(path)
    anchor = _first_existing(path)
    if anchor == path:
        if not path.is_dir():
            return f"{path}: exists and is not a directory"
        for sub in subdirs:
            if os.path.lexists(path / sub) and not (path / sub).is_dir():
                return f"{path}: {path / sub} exists and is not a directory"
        for name in files:
            if (path / name).is_dir():
                return f"{path}: {path / name} is a directory, not a file"
    elif not anchor.is_dir():
        return f"{path}: cannot create it, {anchor} is a file, not a directory"
    if not os.access(anchor, os.W_OK | os.X_OK):
        return f"{path}: not writable (permission denied on {anchor})"
    return _probe_write(path, anchor)


def _probe_write(path: Path, folder: Path) -> str | None:
    """Create and remove a temporary file in `folder`: what access(2) cannot tell (a read-only or virtual
    file system, root's permissions, an ACL) shows here, before any work is done."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".swanbench-probe-"):
            pass
    except OSError as exc:
        return f"{path}: not writable (cannot create a file in {folder}: {exc.strerror or one_line(exc)})"
    return None


def output_file_problem(path: Path) -> str | None:
    """Why a file cannot be written at `path` (a folder there, or no writable folder for it), or None."""
    path = Path(path)
    if path.is_dir():
        return f"{path}: is a directory, not a file"
    if os.path.lexists(path) and not os.access(path, os.W_OK):
        return f"{path}: not writable (permission denied)"
    return output_dir_problem(path.parent)
