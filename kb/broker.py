"""The embedded broker: kombu's folder transport, with messages that appear in the queue folder whole.

kombu 5.7's filesystem transport writes a message in place (open, lock, write), and a worker polling the folder
does not take the lock: it can move and read the file between the open and the write, read nothing, and stop
with "Unrecoverable error: JSONDecodeError", after which every document stays queued (seen once in a fresh-clone
test run, stop 37). Here a message is written under a name no queue matches and renamed into place, which is
atomic within one folder. Redis and AMQP brokers are unaffected (CELERY_BROKER_URL).

And kombu lists and sorts the whole folder for every message it takes: with thousands of small documents queued
(one message each) the worker's main process read thousands of names for each message. Here one listing serves until its
names run out, and a message is taken by renaming it aside in the same folder, so that of two workers sharing the
folder exactly one gets it."""

from __future__ import annotations

import logging
import os
import uuid
from collections import deque
from queue import Empty
from time import monotonic, time
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

TAKEN = ".taken"  # suffix of a message file renamed aside by the process taking it
ABANDONED_AFTER_S = 60


class Channel(filesystem.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listed: dict[str, deque[str]] = {}  # per queue, the names of its last listing not yet taken
        self._return_abandoned()

    def _return_abandoned(self) -> None:
        """Messages a process renamed aside to take (`_take`) and died before reading go back into the queue; a
        live process reads its message within microseconds of the rename, so a minute is far past any of them."""
        now = time()
        try:
            names = os.listdir(self.data_folder_in)
        except OSError:
            return
        for name in names:
            if not (name.startswith(".") and name.endswith(TAKEN)):
                continue
            path = os.path.join(self.data_folder_in, name)
            try:
                if now - os.path.getmtime(path) > ABANDONED_AFTER_S:
                    os.rename(path, os.path.join(self.data_folder_in, name[1 : -len(TAKEN)]))
            except OSError:
                continue  # another process returned or took it meanwhile

    # kombu's filesystem Channel already renames the abstract channel's `message` to `payload`; mypy sees both.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put `payload` onto `queue`: kombu's file name and content, written aside and renamed into place."""
        # Zero-padded, so that names sort by time as text whatever the count of digits (kombu's do not).
        name = f"{round(monotonic() * 1000):015d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")  # "" before the first dot: no queue's
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: str, timeout: Any = None) -> Any:
        """The oldest message of `queue` in the last listing of the folder (names begin with the time they were
        written); the folder is listed again when those are gone, or were taken by another worker."""
        names = self._listed.get(queue)
        listed_now = not names
        if listed_now:
            names = self._list(queue)
        while True:
            while names:
                message = self._take(names.popleft())
                if message is not None:
                    return message
            if listed_now:
                raise Empty()
            names, listed_now = self._list(queue), True

    def _list(self, queue: str) -> deque[str]:
        wanted = f"{queue}.msg"
        names = deque(sorted(name for name in os.listdir(self.data_folder_in) if name.partition(".")[2] == wanted))
        self._listed[queue] = names
        return names

    def _take(self, name: str) -> Any:
        """The message in file `name`, or None when another worker took it first (renamed it aside, atomically)."""
        taken = os.path.join(self.data_folder_in, f".{name}{TAKEN}")
        try:
            os.rename(os.path.join(self.data_folder_in, name), taken)
        except FileNotFoundError:
            return None
        except OSError:  # as kombu does: a file it cannot move is left, and the next one taken
            logger.warning("could not take message %s from the queue folder", name, exc_info=True)
            return None
        try:
            with open(taken, "rb") as f:
                payload = f.read()
            os.remove(taken)
        except OSError as exc:
            raise ChannelError(f"Cannot read file {taken!r} from queue.") from exc
        return loads(bytes_to_str(payload))


class Transport(filesystem.Transport):
    Channel = Channel
