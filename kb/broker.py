"""The embedded broker: kombu's folder transport, with messages that appear in the queue folder whole.

kombu 5.7's filesystem transport writes a message in place (open, lock, write), and a worker polling the folder
does not take the lock: it can move and read the file between the open and the write, read nothing, and stop
with "Unrecoverable error: JSONDecodeError", after which every document stays queued (seen once in a fresh-clone
test run, stop 37). Here a message is written under a name no queue matches and renamed into place, which is
atomic within one folder. Redis and AMQP brokers are unaffected (CELERY_BROKER_URL)."""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's filesystem Channel already renames the abstract channel's `message` to `payload`; mypy sees both.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put `payload` onto `queue`: kombu's file name and content, written aside and renamed into place."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")  # "" before the first dot: no queue's
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
