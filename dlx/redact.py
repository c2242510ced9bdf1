"""Secrets never reach the tracking store: one function masks them in params, tags and the logged config.

Every config leaf becomes a param and the command line becomes a tag, so a password can arrive three
ways, and each is masked with `***`:
- the password of a URI (`http://user:pw@host` -> `http://user:***@host`), in any value or text;
- the value of a key whose last part names a secret (`db.password`, `tracking.tags.api_token`,
  `aws_secret_access_key`), as a config leaf or as `key=value` on a command line;
- the value of an environment variable whose name does (`MY_SECRET_TOKEN`, `MLFLOW_TRACKING_PASSWORD`),
  wherever it appears: that is how a resolved `${oc.env:MY_SECRET_TOKEN}` is caught under any key.
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
# a key is secret when its last part (lower case, '-' read as '_') ends with one of these
SECRET_SUFFIXES = ("password", "passwd", "token", "secret", "api_key", "apikey", "credential", "credentials",
                   "private_key", "access_key", "secret_key")
# an environment variable's value shorter than this is not searched for: "1" or "true" would mask half
# of every config
MIN_ENV_SECRET = 6

_URI_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:)([^\s/@]+)(@)")
_ASSIGNMENT = re.compile(r"(?<![^\s'\"])([+~]{0,2}[\w.\-/]+=)(\"[^\"]*\"|'[^']*'|\S+)")


def is_secret_key(key: str) -> bool:
    return str(key).rsplit(".", 1)[-1].lower().replace("-", "_").endswith(SECRET_SUFFIXES)


def redact(value: Any, key: str = "") -> Any:
    """`value` with every secret masked: dicts and lists are walked, their keys judged; strings are
    searched (`redact_text`). A value under a secret key is masked whole, whatever its type."""
    return _redact(value, key, _env_secrets())


def redact_text(text: str) -> str:
    return _text(text, _env_secrets())


def command_line(args: list[str]) -> str:
    """The words of a command joined for a tag, each masked on its own: `key=value` with a secret key loses
    its whole value, spaces included (joined first, only the value's first word would match)."""
    secrets = _env_secrets()
    out = []
    for arg in args:
        key, eq, _ = arg.partition("=")
        out.append(f"{key}={MASK}" if eq and is_secret_key(key.lstrip("+~")) else _text(arg, secrets))
    return " ".join(out)


def _redact(value: Any, key: str, secrets: list[str]) -> Any:
    if key and is_secret_key(key) and value is not None and not isinstance(value, (dict, list, tuple)):
        return MASK
    if isinstance(value, dict):
        return {k: _redact(v, str(k), secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v, "", secrets) for v in value)
    if isinstance(value, str):
        return _text(value, secrets)
    return value


def _text(text: str, secrets: list[str]) -> str:
    text = _URI_PASSWORD.sub(rf"\1{MASK}\3", text)
    text = _ASSIGNMENT.sub(lambda m: m.group(1) + MASK if is_secret_key(m.group(1)[:-1].lstrip("+~"))
                           else m.group(0), text)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _env_secrets() -> list[str]:
    values = {v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= MIN_ENV_SECRET}
    return sorted(values, key=len, reverse=True)  # the longest first: one secret may contain another
