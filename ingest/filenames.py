"""Display-safe file names for uploaded documents.

The name an uploader's browser sends is untrusted text: it can carry directories ("../../etc/passwd", Windows
"C:\\Users\\..."), control characters that break logs and headers, bidirectional overrides that make
"report\u202efdp.exe" look like "reportexe.pdf", or be absurdly long. The stored original is keyed by its hash,
so this name is only ever shown and offered as a download name.
"""

from __future__ import annotations

import re
import unicodedata

DEFAULT_MAX_LENGTH = 200
# Longer "extensions" are part of the name ("minutes.of the board meeting"), not a type.
MAX_EXTENSION_LENGTH = 16
# Characters Windows refuses in file names, and quotes that break Content-Disposition headers.
_RESERVED = re.compile(r'[<>:"|?*]')
_WINDOWS_DEVICE_NAMES = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{n}" for n in range(1, 10)] + [f"lpt{n}" for n in range(1, 10)]
)
_EXTENSION = re.compile(rf"\.[^.\s]{{1,{MAX_EXTENSION_LENGTH}}}$")


# Cc: controls including NUL; Cf: format characters such as bidi overrides and zero-width spaces; Cs: lone
# surrogates, which cannot even be stored as UTF-8; Co/Cn: private-use and unassigned code points, which render
# as boxes or not at all.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})


class UnsafeFilename(ValueError):
    """No usable name is left; `message` says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _drop_invisible(name: str) -> str:
    return "".join(ch for ch in name if unicodedata.category(ch) not in _UNSAFE_CATEGORIES)


def safe_filename(name: str, *, max_length: int = DEFAULT_MAX_LENGTH) -> str:
    """The base name of `name`, cleaned for display; raises UnsafeFilename when nothing usable is left."""
    if max_length <= MAX_EXTENSION_LENGTH:
        raise ValueError(f"max_length must be more than {MAX_EXTENSION_LENGTH} to leave room for a name")
    cleaned = _drop_invisible(unicodedata.normalize("NFC", name))
    base = re.split(r"[/\\]", cleaned)[-1]
    base = _RESERVED.sub("_", base)
    base = " ".join(base.split())
    # Leading dots hide files and "." / ".." name directories; trailing dots and spaces vanish on Windows.
    base = base.strip(" .")
    if not base or not any(ch.isalnum() for ch in base):
        raise UnsafeFilename(
            f"The file name {name[:80]!r} has no usable characters left after removing folders and special "
            "characters; rename the file (for example report.pdf) and upload it again."
        )
    stem, extension = _split_extension(base)
    if stem.lower() in _WINDOWS_DEVICE_NAMES:
        stem = f"_{stem}"
    if len(stem) + len(extension) > max_length:
        stem = stem[: max_length - len(extension)].rstrip(" .")
    return stem + extension


def _split_extension(base: str) -> tuple[str, str]:
    match = _EXTENSION.search(base)
    if match is None or match.start() == 0:
        return base, ""
    return base[: match.start()], match.group()
