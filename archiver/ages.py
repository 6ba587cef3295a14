"""How old unarchived media may grow: WhatsApp keeps its copy about 14 days, so a backlog
is a warning at 3 days and critical at 7 (status's exit code, the dashboard's banner;
deploy/prometheus/alerts.yml says the same in PromQL)."""

from __future__ import annotations

from datetime import timedelta

WHATSAPP_KEEPS = timedelta(days=14)
WARN_AGE = timedelta(days=3)
CRITICAL_AGE = timedelta(days=7)
