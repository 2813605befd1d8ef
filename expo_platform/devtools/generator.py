"""Synthetic click stream: realistic beacons for experiments, deterministic for a seed.

Visitors have several sessions, sessions several visits (gaps over 35 minutes), visits cross
hour boundaries; experiments have 2 or 3 variants with configurable true effects. A knob
adds dirty lines: duplicates and every rejection reason, each built so that it is rejected
with exactly the reason it is counted under. Another adds trap sessions: valid traffic at the
edges of every visit, duplicate and population rule of METRICS.md (see TRAP_KINDS).

The realistic traffic is built in `traffic_model`, the trap sessions in `trap_sessions`;
this module mixes in the dirty lines and writes the landing files by hour. Live traffic at a
rate is `live_traffic`.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from expo_platform.core.hours import HOUR_MS, hour_key, hour_of_ms, hour_start_ms
from expo_platform.devtools.traffic_model import (
    DEFAULT_EXPERIMENTS,
    ExperimentSpec,
    _dumps,
    _Stream,
)
from expo_platform.devtools.trap_sessions import _Traps
from expo_platform.errors import ExpoError

REJECT_KINDS = ("malformed_json", "missing_field", "bad_field", "wrong_partition")
# Shares of the dirty lines by kind.
DIRTY_MIX = (("duplicate", 0.4), *((kind, 0.15) for kind in REJECT_KINDS))


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate."""

    start: datetime
    hours: int = 24
    visitors: int = 2000
    seed: int = 7
    dirty_fraction: float = 0.0
    experiments: tuple[ExperimentSpec, ...] = DEFAULT_EXPERIMENTS
    trap_fraction: float = 0.0  # share of visitors that also get a trap session (TRAP_KINDS)
    # Live traffic generates its arrivals piece by piece: each piece's visitors and sessions
    # get ids of their own, and their visits run on past the piece's hours instead of
    # being cut at its end.
    id_prefix: str = ""
    cut_at_end: bool = True
    # Beacons before this epoch ms are not built (the random draws are, so what follows is
    # the same): live traffic starts at the wall clock and has no use for its warm-up's past.
    keep_from_ms: int | None = None
    # Multi-day histories for CUPED: visits that start before `experiments_from` carry no
    # experiments (and no effect); `propensity` (the sigma of a log-normal, mean 1) makes some
    # visitors browse and order more than others on every day. The defaults change nothing.
    experiments_from: datetime | None = None
    propensity: float = 0.0

    def validate(self) -> None:
        """Raise ExpoError on a configuration that cannot be generated."""
        if self.hours < 1:
            raise ExpoError(f"hours must be at least 1, not {self.hours}")
        if self.visitors < 1:
            raise ExpoError(f"visitors must be at least 1, not {self.visitors}")
        if not 0.0 <= self.dirty_fraction <= 0.5:
            raise ExpoError(f"the dirty fraction must lie in 0..0.5, not {self.dirty_fraction}")
        if not 0.0 <= self.propensity <= 3.0:
            raise ExpoError(f"the propensity must lie in 0..3, not {self.propensity}")
        if not 0.0 <= self.trap_fraction <= 1.0:
            raise ExpoError(f"the trap fraction must lie in 0..1, not {self.trap_fraction}")
        # Landing files are by hour; only live pieces (never landed whole) start in between.
        if self.cut_at_end and hour_start_ms(self.start) % HOUR_MS:
            raise ExpoError(f"start must be on the hour, not {self.start.isoformat()}")


@dataclass
class GenerationReport:
    """What was written: the expected data-quality figures, per hour and in total."""

    lines_by_hour: dict[str, int] = field(default_factory=dict)
    kinds_by_hour: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    files: list[Path] = field(default_factory=list)
    traps: Counter = field(default_factory=Counter)  # trap kind -> its lines (re-sends too)

    @property
    def clean(self) -> int:
        """Valid, unique beacons."""
        return sum(c["clean"] for c in self.kinds_by_hour.values())

    @property
    def duplicates(self) -> int:
        """Exact re-sends."""
        return sum(c["duplicate"] for c in self.kinds_by_hour.values())

    @property
    def rejects(self) -> dict[str, int]:
        """Lines per rejection reason."""
        return {k: sum(c[k] for c in self.kinds_by_hour.values()) for k in REJECT_KINDS}


def _dirty_line(kind: str, base: dict, rng: random.Random, fresh_id: str) -> tuple[str, int]:
    """A line of the given kind built from a clean beacon; returns (line, ts for its hour)."""
    ts = base["ts"]
    if kind == "duplicate":
        return _dumps(base), ts
    if kind == "malformed_json":
        text = _dumps(base)
        return rng.choice((text[: len(text) // 2], "[1,2,3]", '"page_view"', "{oops")), ts
    data = {**base, "event_id": fresh_id}
    if kind == "missing_field":
        name = rng.choice(("event_id", "visitor_id", "session_id", "ts", "type"))
        how = rng.choice(("absent", "null", "empty"))
        if how == "absent":
            del data[name]
        else:
            data[name] = None if how == "null" else ""
    elif kind == "bad_field":
        choice = rng.randrange(6)
        if choice == 0:
            data["ts"] = str(ts)
        elif choice == 1:
            data["ts"] = ts + 0.5
        elif choice == 2:
            data["type"] = "click"
        elif choice == 3:
            data["visitor_id"] = rng.randrange(10**6)
        elif choice == 4:
            data["experiments"] = "checkout-button"
        else:
            data.update(type="order", order={"order_id": "o-bad", "revenue": -5.0, "units": 1})
    elif kind == "wrong_partition":
        # Written into its own hour's file with a ts one hour off: valid but misfiled.
        shifted = ts + rng.choice((-HOUR_MS, HOUR_MS))
        data["ts"] = shifted
        return _dumps(data), ts
    return _dumps(data), ts


def iter_lines(config: GeneratorConfig) -> Iterator[tuple[str, str, str]]:
    """Yield (landing hour key, line, kind) in arrival order; kind is clean, duplicate or a reason.

    Arrival order is time order, except for trap lines sent late or out of order; a line's
    hour key is always the hour of its ts.
    """
    for _, key, line, kind, _ in _tagged_lines(config):
        yield key, line, kind


def _tagged_lines(config: GeneratorConfig) -> Iterator[tuple[int, str, str, str, str]]:
    """iter_lines with each line's arrival (epoch ms) first and its trap kind last ("" for the
    realistic traffic)."""
    config.validate()
    stream = _Stream(config)
    clean = sorted(stream.beacons(), key=lambda b: (b["ts"], b["event_id"]))
    dirty_rng = random.Random(config.seed * 7919 + 1)
    n_dirty = round(config.dirty_fraction * len(clean)) if clean else 0
    kinds = [k for k, _ in DIRTY_MIX]
    weights = [w for _, w in DIRTY_MIX]
    extra: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for i in range(n_dirty):
        # The first few cycle through every kind, so each occurs even in small samples.
        kind = kinds[i] if i < len(kinds) else dirty_rng.choices(kinds, weights)[0]
        position = dirty_rng.randrange(len(clean))
        line, _ = _dirty_line(kind, clean[position], dirty_rng, f"x-{config.seed}-{i}")
        extra[position].append((line, kind))
    # Trap lines merge in by arrival; without traps there are none and nothing else changes.
    traps = iter(_Traps(config).build())
    trap = next(traps, None)
    for position, beacon in enumerate(clean):
        while trap is not None and trap.arrival < beacon["ts"]:
            yield trap.arrival, hour_key(hour_of_ms(trap.ts)), trap.line, trap.kind, trap.trap
            trap = next(traps, None)
        ts = beacon["ts"]
        key = hour_key(hour_of_ms(ts))
        yield ts, key, _dumps(beacon), "clean", ""
        for line, kind in extra.get(position, ()):
            yield ts, key, line, kind, ""
    while trap is not None:
        yield trap.arrival, hour_key(hour_of_ms(trap.ts)), trap.line, trap.kind, trap.trap
        trap = next(traps, None)


def write_landing(
    config: GeneratorConfig,
    landing_dir: Path,
    progress: Callable[[str], None] | None = None,
) -> GenerationReport:
    """Write one file per hour, `hour=<key>/part-<seed>.json`; re-running rewrites the same."""
    report = GenerationReport()
    by_hour: dict[str, list[str]] = defaultdict(list)
    for _, key, line, kind, trap in _tagged_lines(config):
        # A line sent late lands at the end of its event hour's file, out of ts order.
        by_hour[key].append(line)
        report.kinds_by_hour[key][kind] += 1
        if trap:
            report.traps[trap] += 1
    blank_rng = random.Random(config.seed + 17)
    for key in sorted(by_hour):
        lines = by_hour[key]
        if config.dirty_fraction > 0:
            # Blank lines are not beacons: not counted anywhere.
            for _ in range(1 + len(lines) // 5000):
                lines.insert(blank_rng.randrange(len(lines) + 1), "")
        folder = landing_dir / f"hour={key}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part-{config.seed}.json"
        with path.open("w", encoding="utf-8", buffering=1 << 20) as out:
            out.write("\n".join(lines))
            out.write("\n")
        report.lines_by_hour[key] = sum(1 for line in lines if line)
        report.files.append(path)
        if progress:
            progress(f"hour {key}: {report.lines_by_hour[key]:,} lines")
    return report
