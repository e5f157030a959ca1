import logging
import re

from django.views.debug import SafeExceptionReporterFilter as DjangoFilter


class SafeExceptionReporterFilter(DjangoFilter):
    """Django's filter, also hiding settings that hold URLs (broker, result backend), which may carry passwords."""

    hidden_settings = re.compile("API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|BACKEND", flags=re.IGNORECASE)


class ClientErrorsInOneLine(logging.Filter):
    """Django logs a refused request (403 from PermissionDenied, 400 from SuspiciousOperation) with the
    exception's traceback: for the operator it is one expected line, not a crash. Server errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if status is not None and status < 500:
            record.exc_info = None
            record.exc_text = None
        return True
