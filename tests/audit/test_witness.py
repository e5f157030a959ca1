"""The witness outside the database (kb/audit/witness.py) and the signing key (kb/audit/signing.py)."""

from __future__ import annotations

import base64
import json
import socket

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.core.management import call_command
from django.core.management.base import CommandError

from kb.audit import chain, services
from kb.audit.signing import SigningKeyError, signing_key, signing_key_ensure
from tests.audit.conftest import record_some


def test_each_checkpoint_is_one_signed_line_in_the_month_file(empty_log, settings):
    record_some(3)
    checkpoint = services.checkpoint_make(reason="time")
    (path,) = settings.KB_AUDIT_WITNESS_DIR.iterdir()
    assert path.name == f"checkpoints-{checkpoint.signed_at:%Y-%m}.jsonl"
    (line,) = path.read_text().splitlines()
    record = json.loads(line)
    assert record["checkpoint"] == {
        "v": 1,
        "first_seq": 1,
        "last_seq": 3,
        "last_hash": checkpoint.last_hash,
        "events": 3,
        "signed_at": chain.timestamp(checkpoint.signed_at),
        "reason": "time",
        "key_id": signing_key().key_id,
    }
    # Anyone with the printed public key can check the line with nothing but the cryptography package.
    public = Ed25519PublicKey.from_public_bytes(signing_key().public_raw)
    public.verify(base64.b64decode(record["signature"]), chain.canonical_json(record["checkpoint"]).encode())
    assert services.checkpoint_make(reason="time") is None  # the head has not moved: nothing to sign


def test_every_line_also_reaches_a_syslog_host(empty_log, settings, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        settings.KB_AUDIT_WITNESS_SYSLOG = f"udp://127.0.0.1:{server.getsockname()[1]}"
        record_some(2)
        checkpoint = services.checkpoint_make(reason="export")
        received = server.recv(65536).decode()
    assert "kb-audit-checkpoint: " in received and checkpoint.signature in received
    # What the syslog host kept is enough to check the log against.
    copy = tmp_path / "syslog.log"
    copy.write_text(f"Dec  2 06:00:00 kb {received.strip()}\n")
    call_command("audit_verify", witness=str(copy))


def test_a_witness_that_cannot_be_written_keeps_the_checkpoint_and_says_so(empty_log, settings, caplog):
    settings.KB_AUDIT_WITNESS_DIR.parent.mkdir(parents=True, exist_ok=True)
    settings.KB_AUDIT_WITNESS_DIR.write_text("a file where the folder should be")
    record_some(2)
    checkpoint = services.checkpoint_make(reason="time")
    assert checkpoint is not None and checkpoint.pk
    assert "could not append checkpoint #2 to the audit witness" in caplog.text
    settings.KB_AUDIT_WITNESS_DIR.unlink()
    report = services.chain_verify()  # once the witness is writable, verification appends what it missed
    assert report.ok and "has been appended" in report.message()


def test_the_key_is_created_once_private_and_reused(settings):
    key, created = signing_key_ensure()
    assert created and settings.KB_AUDIT_SIGNING_KEY.stat().st_mode & 0o777 == 0o600
    again, created = signing_key_ensure()
    assert not created and again.public_raw == key.public_raw and len(key.key_id) == 16
    assert again.verifies(b"x", key.sign(b"x")) and not again.verifies(b"y", key.sign(b"x"))


def test_a_key_file_that_is_not_an_ed25519_key_is_refused_with_what_to_do(settings):
    settings.KB_AUDIT_SIGNING_KEY.parent.mkdir(parents=True, exist_ok=True)
    settings.KB_AUDIT_SIGNING_KEY.write_text("not a key")
    with pytest.raises(
        SigningKeyError, match=r"cannot be read .*restore it from backup, or point KB_AUDIT_SIGNING_KEY"
    ):
        signing_key()


def test_the_commands_say_when_the_key_cannot_be_read(empty_log, settings):
    settings.KB_AUDIT_SIGNING_KEY.parent.mkdir(parents=True, exist_ok=True)
    settings.KB_AUDIT_SIGNING_KEY.write_text("not a key")
    # verify: 2, a configuration error (1 means a broken log); purge: 1, like every refused purge.
    for command, code in (("audit_verify", 2), ("audit_purge", 1)):
        with pytest.raises(CommandError, match=r"The audit signing key .* cannot be read") as refused:
            call_command(command)
        assert refused.value.returncode == code, command
