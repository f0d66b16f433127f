"""What the tests look for in log output that must never show: an HTTP 410 from a lapsed gpu slot's renewal.

A bare `"410" in line` also matches Prefect's own lines by chance: a server port (127.0.0.1:41055), a log
timestamp's milliseconds (16:14:09.410) or a run id's hex (…a410b…). A status code stands alone.
"""

from __future__ import annotations

import re

_HTTP_410 = re.compile(r"(?<![\w.:])410(?!\w)")


def mentions_http_410(text: str) -> bool:
    """True when the text carries 410 as a status code ("410 Gone", "HTTP 410"), not inside a number or an id."""
    return bool(_HTTP_410.search(text)) or "Gone" in text
