"""manage.py slo_report [--json]: each SLO's target, burn rates and error budget left, from the exchanges on record."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from kb.ops.slo import slo_report


class Command(BaseCommand):
    help = (
        "Print each SLO's target, burn rates over 5m/30m/1h/6h/3d/30d (error ratio / error budget), the share of "
        "the 30-day error budget left and the burn-rate alerts that hold now."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="one JSON object per SLO, in a list")

    def handle(self, *args, **options):
        report = slo_report()
        if options["json"]:
            rows = [
                {
                    "slo": status.name,
                    "target": status.target,
                    "windows": {
                        f.window: {"events": f.events, "bad": f.bad, "burn_rate": f.burn_rate} for f in status.windows
                    },
                    "budget_remaining": status.budget_remaining,
                    "status": status.status,
                    "alerts": [alert.name for alert in status.alerts],
                }
                for status in report
            ]
            self.stdout.write(json.dumps(rows, indent=2))
            return
        self.stdout.write(f"{'SLO':<14}{'target':>8}{'1h':>8}{'6h':>8}{'3d':>8}{'budget left':>13}  status")
        for status in report:
            burns = "".join(f"{figure.burn_rate:>8.2f}" for figure in status.shown_windows)
            alerts = f" ({status.severity}: {', '.join(a.name for a in status.alerts)})" if status.alerts else ""
            self.stdout.write(
                f"{status.name:<14}{status.target_label:>8}{burns}{status.budget_remaining_percent:>12.0f}%  "
                f"{status.status}{alerts}"
            )
