"""What a failed HTTP call tells about the request: did it reach the server or not?

A write whose answer was lost (read timeout, connection cut mid-answer, a truncated body) may have been
applied. Repeating it blindly can post a photo twice, append a Done row twice or, for Sheets' positional
deletes, delete a different row. Only a connection that never opened is certainly safe to repeat.
"""

from __future__ import annotations

import requests
import urllib3.exceptions


def never_reached_server(exc: BaseException) -> bool:
    """True when the connection itself failed (refused, DNS, connect timeout): nothing was sent."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        reason = exc.args[0] if exc.args else None
        inner = getattr(reason, "reason", None)
        return isinstance(reason, urllib3.exceptions.NewConnectionError) or isinstance(
            inner, urllib3.exceptions.NewConnectionError
        )
    return False
