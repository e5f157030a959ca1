"""Refuse oversized files while they are being received, before anything is stored."""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, SkipFile


class SizeLimitUploadHandler(FileUploadHandler):
    """Drops a file as soon as it passes KB_MAX_UPLOAD_MB and notes its name on the request, so that
    the view can say which files were refused. The next handlers never see the dropped bytes."""

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        if self.received > settings.KB_MAX_UPLOAD_BYTES:
            if self.request is not None:
                refused = getattr(self.request, "kb_oversized_files", [])
                refused.append(self.file_name)
                setattr(self.request, "kb_oversized_files", refused)  # noqa: B010 - HttpRequest has no such field
            raise SkipFile
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None
