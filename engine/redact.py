"""The one place that masks credentials in text bound for a log, an error, a dead letter or a page.

Three kinds of secret reach text here: a password in a URL
(``redis://:pw@host``), a key in a query string or header-like pair
(``apikey=…``, ``token=…``), and secrets the caller knows by value (a
provider's API key quoted back in its error body). Every reader of settings,
the queue's dead-letter entries, the provider clients and the CLI use these
two functions, so a fix here fixes them all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: What replaces a secret.
MASK = "***"

_URL_PASSWORD = re.compile(r"(?<=://)([^:@/\s]*):([^@/\s]*)@")
_SECRET_PARAM = re.compile(r"(?i)\b(api[_-]?key|apikey|key|token|password|secret|signature)=([^&\s\"']+)")


def redact_url(url: str) -> str:
    """The URL with any password replaced (``redis://user:***@host``)."""
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", url)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords, ``key=value`` credentials and each of ``secrets`` masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = redact_url(text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}={MASK}", text)
