"""Secrets kept out of what grand writes: error rows, the manifest, run reports, logs.

An endpoint URL may carry credentials (`https://user:key@host/v1`, `...?api_key=...`) and a
config's free-form options (vLLM `engine_args`, `extra_body`) may carry tokens. `redact_url`
masks the userinfo and every query value of a URL; `redact_config` masks those in a config dump,
plus the values of keys named like secrets; `scrub` masks given secret strings inside any text
(an exception message that quotes the URL).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# option keys whose values are credentials (case-insensitive, whole key or its last _part)
_SECRET_KEY = re.compile(
    r"(?:^|_)(?:token|hf_token|access_token|auth_token|api_key|apikey|secret|client_secret|password|passwd|"
    r"authorization|credentials?|private_key)$",
    re.IGNORECASE,
)
_URL_IN_TEXT = re.compile(r"[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    """Whether an option named `key` holds a credential (`hf_token`, `api_key`; not `max_tokens`,
    `eos_token`... : those name token *counts* or *strings* of a vocabulary)."""
    k = key.lower()
    if k in {"eos_token", "bos_token", "pad_token", "unk_token"} or k.startswith(("max_", "min_", "num_")):
        return False
    return bool(_SECRET_KEY.search(k))


def redact_url(url: str) -> str:
    """`url` without credentials: user:password@ and query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(f"{kv.split('=', 1)[0]}={MASK}" if "=" in kv else kv for kv in parts.query.split("&")) \
        if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every URL redacted and each of `secrets` masked."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact_config(obj):
    """A JSON-like config dump with URLs (any string value that is one) and secret-named keys masked."""
    if isinstance(obj, dict):
        return {k: (MASK if isinstance(k, str) and is_secret_key(k) and v not in (None, "") else redact_config(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_config(v) for v in obj]
    if isinstance(obj, str) and "://" in obj:
        return scrub(obj)
    return obj
