"""Keeping secrets out of messages, logs and sheets.

The seams never format raw client exceptions, but text still comes from outside (a service's error
description, an exception from a library we did not anticipate). ``redact`` is the last line: it
removes every registered secret value and anything shaped like a Telegram bot token.
"""

from __future__ import annotations

import logging
import re
import threading

_TELEGRAM_TOKEN_RE = re.compile(r"\d{5,}:[A-Za-z0-9_-]{20,}")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_PEM_RE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
_HF_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{10,}\b")

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value so ``redact`` removes it wherever it shows up."""
    if value and len(value) >= 6:
        with _lock:
            _secrets.add(value)


def redact(text: object) -> str:
    out = str(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in out:
            out = out.replace(secret, "[REDACTED]")
    out = _PEM_RE.sub("[REDACTED PRIVATE KEY]", out)
    out = _TELEGRAM_TOKEN_RE.sub("[REDACTED]", out)
    out = _HF_TOKEN_RE.sub("[REDACTED]", out)
    out = _BEARER_RE.sub(r"\1[REDACTED]", out)
    return out


class RedactingFilter(logging.Filter):
    """Logging filter that rewrites the final message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix here
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_installed = False


def install_log_redaction() -> None:
    """Quiet the HTTP libraries that log URLs (the Telegram token is in the URL) and filter the rest."""
    global _installed
    if _installed:
        return
    _installed = True
    flt = RedactingFilter()
    for name in ("urllib3", "httpx", "httpx2", "httpcore", "requests", "google.auth", "gspread"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        # A logger's own filter sees every record created on it, whatever handlers a host app adds later.
        logger.addFilter(flt)
    for name in ("urllib3.connectionpool", "httpx2._client", "httpcore.http11"):
        logging.getLogger(name).addFilter(flt)
    root = logging.getLogger()
    root.addFilter(flt)
    for handler in root.handlers:
        handler.addFilter(flt)
