"""Files only this account may read (secret key, first admin password)."""

import os
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    # Created with mode 0600 in one step: no moment in which another account could read it. var/ is
    # opened to other accounts for the embedded PostgreSQL.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
