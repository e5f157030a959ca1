import re

from django.views.debug import SafeExceptionReporterFilter as DjangoFilter


class SafeExceptionReporterFilter(DjangoFilter):
    """Django's filter, also hiding settings that hold URLs (broker, result backend), which may carry passwords."""

    hidden_settings = re.compile("API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL|BACKEND", flags=re.IGNORECASE)
