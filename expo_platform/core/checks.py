"""Data checks as plain rules: the batch assets' checks call these, and tests test them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from expo_platform.core.beacons import REJECT_REASONS

Values = Mapping[str, float]

# Relations every key's metrics of one hour must satisfy (METRICS.md section 4).
SANITY_RULES: tuple[tuple[str, Callable[[Values], bool]], ...] = (
    ("bounces <= visits", lambda m: m.get("bounces", 0) <= m.get("visits", 0)),
    ("visitors <= visitors_24h", lambda m: m.get("visitors", 0) <= m.get("visitors_24h", 0)),
    (
        "page_load_ms_count <= page_views",
        lambda m: m.get("page_load_ms_count", 0) <= m.get("page_views", 0),
    ),
    ("no negative value", lambda m: min(m.values(), default=0) >= 0),
)


def metrics_by_key(points: Iterable) -> dict[tuple[str, str, str], dict[str, float]]:
    """Store points of one hour grouped per (experiment, variant, population)."""
    by_key: dict[tuple[str, str, str], dict[str, float]] = {}
    for p in points:
        by_key.setdefault((p.experiment, p.variant, p.population), {})[p.metric] = p.value
    return by_key


def sanity_violations(by_key: Mapping[tuple, Values]) -> list[str]:
    """`key: rule` for every key whose metrics break a rule of SANITY_RULES, sorted."""
    return [
        f"{'/'.join(key)}: {name}"
        for key, values in sorted(by_key.items())
        for name, rule in SANITY_RULES
        if not rule(values)
    ]


def rejected_by_reason(counts: Mapping[str, int]) -> dict[str, int]:
    """Rejected lines per reason from an hour's quality counts (`beacons_rejected_<reason>`)."""
    return {r: counts.get(f"beacons_rejected_{r}", 0) for r in REJECT_REASONS}


def reject_rate(counts: Mapping[str, int]) -> float:
    """Share of an hour's lines rejected (duplicates are valid beacons sent twice: not
    rejects); 0 for an hour without lines."""
    total = counts.get("beacons_total", 0)
    return sum(rejected_by_reason(counts).values()) / total if total else 0.0
