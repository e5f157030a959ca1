#!/usr/bin/env python
"""Django's command-line utility for kb."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kb.settings")
    from django.core.management import execute_from_command_line

    from kb.entry import fail_cleanly

    fail_cleanly(lambda: execute_from_command_line(sys.argv))


if __name__ == "__main__":
    main()
