"""The one check for names that become file or folder names (design §8): row labels (``--save-maps``
folders), dataset names (cache, split and map paths), case ids (cache entries, map files).

A name is used as one path component, never as a path: nothing is written outside the workdir or the folder
the user named. Names are refused rather than rewritten, so that two names never map to one file and the
user finds their files under the names they gave.
"""

from __future__ import annotations

from lesionbench.config import ConfigError

#: Longest name in UTF-8 bytes: cache files join a dataset name, a case id and a hash under the usual 255-byte limit.
MAX_NAME_BYTES = 100


def safe_name(name, what: str, forbid: str = "") -> str:
    """``name`` when it is safe as one file name, else a ConfigError naming ``what`` and the reason.

    Refused: empty, ``.`` and ``..``, path separators (``/``, ``\\``), control characters, more than
    :data:`MAX_NAME_BYTES` bytes, and the characters in ``forbid`` (e.g. ``=`` for dataset names, which
    ``--root NAME=PATH`` could not give).
    """
    text = name if isinstance(name, str) else None
    if text is None:
        raise ConfigError(f"{what} {name!r}: expected a string")
    reason = None
    if text in ("", ".", ".."):
        reason = "it is empty or a relative folder"
    elif "/" in text or "\\" in text:
        reason = "it holds a path separator (/ or \\)"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        reason = "it holds control characters"
    elif len(text.encode()) > MAX_NAME_BYTES:
        reason = f"it is longer than {MAX_NAME_BYTES} bytes"
    elif any(ch in text for ch in forbid):
        reason = f"it holds {' or '.join(repr(ch) for ch in forbid if ch in text)}"
    if reason is not None:
        raise ConfigError(f"{what} {text!r} cannot name a file: {reason}; choose another name")
    return text
