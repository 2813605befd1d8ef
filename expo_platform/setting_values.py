"""How an environment variable's text becomes a setting's typed value, and back.

Each parser raises ValueError (or TypeError) with a short reason; `load_settings` names the
variable and its text in the error it raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from expo_platform.core.hours import parse_hour
from expo_platform.errors import ExpoError


def path(text: str) -> Path:
    """A path as given; `load_settings` anchors a relative one at the home folder."""
    return Path(text).expanduser()


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must lie between 0 and 1")
    return value


def percentile(text: str) -> float:
    """A percentile in [0, 100]; 0 means off where a setting says so."""
    value = float(text)
    if not 0.0 <= value <= 100.0:
        raise ValueError("must lie between 0 and 100")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number >= 0")
    return value


def conf(text: str) -> dict[str, str]:
    """Parse `key=value,key=value` into a dict."""
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    conf = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{pair!r} is not key=value")
        conf[key.strip()] = value.strip()
    return conf


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return parse


REGION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}"


def region(text: str) -> str:
    if text and not re.fullmatch(REGION_PATTERN, text):
        raise ValueError("must be empty, or up to 32 letters, digits, '-' and '_'")
    return text


def lease_seconds(text: str) -> int:
    value = int(text)
    # ZooKeeper grants session timeouts of 2 to 20 ticks (tickTime=2000 ms here).
    if not 4 <= value <= 40:
        raise ValueError("must lie between 4 and 40 seconds")
    return value


def weights(text: str) -> dict[str, float]:
    """Parse `experiment/variant=weight,...` into positive floats."""
    weights = {k: float(v) for k, v in conf(text).items()}
    if any(w <= 0 for w in weights.values()):
        raise ValueError("weights must be > 0")
    if any(k.count("/") != 1 for k in weights):
        raise ValueError("keys must be experiment/variant")
    return weights


def hour(text: str) -> datetime:
    try:
        return parse_hour(text)
    except ExpoError as exc:
        raise ValueError(str(exc)) from None


def store_url(text: str) -> str:
    if not text.startswith(("sqlite:", "postgresql:", "postgresql+")):
        raise ValueError("must start with sqlite:/// or postgresql://")
    return text


def memory(text: str) -> str:
    """A JVM memory size such as `2g` or `1536m`."""
    if not text[:-1].isdigit() or text[-1].lower() not in "mg" or int(text[:-1]) == 0:
        raise ValueError("must be a size such as 2g or 1536m")
    return text


def as_text(value: Any) -> str:
    """A setting's value as the variable's text: the inverse of its parser."""
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H")
    return str(value)
