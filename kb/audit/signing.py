"""The audit signing key: an Ed25519 key in a file outside the database (KB_AUDIT_SIGNING_KEY).

Checkpoints and purge events are signed with it, so that someone who can write to the database (but cannot
read this file) can neither forge a purge nor make a shortened or rewritten log agree with a signed checkpoint.
The public key, printed by `make run`, is what compliance keeps to check the witness on its own.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

logger = logging.getLogger(__name__)


class SigningKeyError(Exception):
    """The key file cannot be read or written; the message says which file and what to do."""


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    path: Path

    @property
    def public_raw(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def public_b64(self) -> str:
        """The public key as compliance keeps it: 32 bytes, base64."""
        return base64.b64encode(self.public_raw).decode("ascii")

    @property
    def key_id(self) -> str:
        """A short name for the key, carried by every signature: the first 16 hex digits of its sha256."""
        return hashlib.sha256(self.public_raw).hexdigest()[:16]

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private.sign(message)).decode("ascii")

    def verifies(self, message: bytes, signature: str) -> bool:
        try:
            self.public.verify(base64.b64decode(signature, validate=True), message)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True


def _create(path: Path) -> None:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0600 from the first byte (O_EXCL: never overwrite a key that appeared meanwhile).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())


@lru_cache(maxsize=4)
def _load(path: Path, mtime_ns: int) -> SigningKey:
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise SigningKeyError(
            f"The audit signing key {path} cannot be read ({error}): restore it from backup, or point "
            "KB_AUDIT_SIGNING_KEY at it."
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"The audit signing key {path} is not an Ed25519 key: point KB_AUDIT_SIGNING_KEY at one.")
    return SigningKey(private=private, public=private.public_key(), path=path)


def signing_key_ensure(path: Path | None = None) -> tuple[SigningKey, bool]:
    """The key at `path` (default KB_AUDIT_SIGNING_KEY), created 0600 if missing; and whether it was created."""
    path = path or settings.KB_AUDIT_SIGNING_KEY
    created = False
    if not path.exists():
        try:
            _create(path)
            created = True
        except FileExistsError:  # another process created it first: use theirs
            pass
        except OSError as error:
            raise SigningKeyError(
                f"Cannot create the audit signing key {path} ({error.strerror}): make its folder writable, or "
                "set KB_AUDIT_SIGNING_KEY to a writable path."
            ) from None
    return _load(path, path.stat().st_mtime_ns), created


def signing_key() -> SigningKey:
    """The configured key; created on first use like SECRET_KEY (`make run` creates it at start and prints it)."""
    key, created = signing_key_ensure()
    if created:
        logger.warning("created the audit signing key %s (public key %s, id %s)", key.path, key.public_b64, key.key_id)
    return key
