"""Log records carry the correlation id; ``LOG_FORMAT=json`` writes one JSON object per line."""

import json
import logging

from webhooks import correlation

FIELDS = ("event", "delivery", "subscription", "attempt", "outcome", "status", "duration_ms", "error", "url")


class CorrelationIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "correlation_id", None):
            # Django logs 4xx/5xx responses ("django.request") after the middleware has returned.
            request = getattr(record, "request", None)
            record.correlation_id = getattr(request, "correlation_id", "") or correlation.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", "-"),
        }
        line.update({name: getattr(record, name) for name in FIELDS if hasattr(record, name)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
