"""Synthetic click stream: realistic beacons for experiments, deterministic for a seed.

Visitors have several sessions, sessions several visits (gaps over 35 minutes), visits cross
hour boundaries; experiments have 2 or 3 variants with configurable true effects. A knob
adds dirty lines: duplicates and every rejection reason, each built so that it is rejected
with exactly the reason it is counted under.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

from expo_platform.errors import ExpoError
from expo_platform.hours import HOUR_MS, hour_key, hour_of_ms, hour_start_ms

REJECT_KINDS = ("malformed_json", "missing_field", "bad_field", "wrong_partition")
# Shares of the dirty lines by kind.
DIRTY_MIX = (("duplicate", 0.4), *((kind, 0.15) for kind in REJECT_KINDS))
MINUTE_MS = 60_000
# Relative traffic per UTC hour of day: quiet at night, busy 8-22.
DIURNAL = tuple(0.25 if h < 6 else 0.6 if h < 8 else 1.0 if h < 22 else 0.5 for h in range(24))
BASE_ORDER_RATE = 0.12  # of visits with more than one beacon
BASE_ERROR_RATE = 0.015  # of beacons
BOUNCE_SHARE = 0.37
RELOAD_SHARE = 0.03  # orders whose confirmation page is reloaded: the same order_id again


@dataclass(frozen=True)
class Effect:
    """Multiplicative true effects of a variant against the baseline."""

    order_rate: float = 1.0
    revenue: float = 1.0
    page_views: float = 1.0
    error_rate: float = 1.0
    page_load: float = 1.0


NO_EFFECT = Effect()


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment: its variants (the first is control) and where visitors qualify."""

    id: str
    variants: tuple[str, ...]
    qualify_pages: tuple[str, ...]
    effects: Mapping[str, Effect] = field(default_factory=lambda: MappingProxyType({}))
    weights: tuple[float, ...] | None = None
    enrolment: float = 0.8  # share of visitors in the experiment


DEFAULT_EXPERIMENTS = (
    ExperimentSpec(
        "checkout-button",
        ("control", "treatment"),
        qualify_pages=("/cart", "/checkout"),
        effects=MappingProxyType({"treatment": Effect(order_rate=1.2)}),
        enrolment=0.9,
    ),
    ExperimentSpec(
        "search-ranking",
        ("control", "variant-a", "variant-b"),
        qualify_pages=("/search",),
        effects=MappingProxyType(
            {"variant-a": Effect(page_views=1.05), "variant-b": Effect(page_views=0.97)}
        ),
        enrolment=0.7,
    ),
    ExperimentSpec("aa-check", ("control", "control-b"), qualify_pages=("/",), enrolment=0.6),
)


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate."""

    start: datetime
    hours: int = 24
    visitors: int = 2000
    seed: int = 7
    dirty_fraction: float = 0.0
    experiments: tuple[ExperimentSpec, ...] = DEFAULT_EXPERIMENTS

    def validate(self) -> None:
        """Raise ExpoError on a configuration that cannot be generated."""
        if self.hours < 1:
            raise ExpoError(f"hours must be at least 1, not {self.hours}")
        if self.visitors < 1:
            raise ExpoError(f"visitors must be at least 1, not {self.visitors}")
        if not 0.0 <= self.dirty_fraction <= 0.5:
            raise ExpoError(f"the dirty fraction must lie in 0..0.5, not {self.dirty_fraction}")
        if hour_start_ms(self.start) % HOUR_MS:
            raise ExpoError(f"start must be on the hour, not {self.start.isoformat()}")


@dataclass
class GenerationReport:
    """What was written: the expected data-quality figures, per hour and in total."""

    lines_by_hour: dict[str, int] = field(default_factory=dict)
    kinds_by_hour: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    files: list[Path] = field(default_factory=list)

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


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (not Python's salted hash())."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign(spec: ExperimentSpec, visitor: str, seed: int) -> str | None:
    """The variant of a visitor in an experiment, or None when not enrolled."""
    if _unit(seed, "enrol", spec.id, visitor) >= spec.enrolment:
        return None
    weights = spec.weights or (1.0,) * len(spec.variants)
    point = _unit(seed, "variant", spec.id, visitor) * sum(weights)
    for variant, weight in zip(spec.variants, weights, strict=True):
        point -= weight
        if point < 0:
            return variant
    return spec.variants[-1]


def _combined(specs: tuple[ExperimentSpec, ...], variants: dict[str, str]) -> Effect:
    """The product of the effects of every variant the visitor is in."""
    totals = {name: 1.0 for name in Effect.__dataclass_fields__}
    for spec in specs:
        effect = spec.effects.get(variants.get(spec.id, ""), NO_EFFECT)
        for name in totals:
            totals[name] *= getattr(effect, name)
    return Effect(**totals)


class _Stream:
    """Builds the clean beacons of the whole period, visit by visit."""

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.start_ms = hour_start_ms(config.start)
        self.end_ms = self.start_ms + config.hours * HOUR_MS
        self.next_event = 0
        self.next_order = 0
        hours_of_day = [(config.start.hour + h) % 24 for h in range(config.hours)]
        self.hour_weights = [DIURNAL[h] for h in hours_of_day]

    def event_id(self) -> str:
        self.next_event += 1
        return f"e-{self.config.seed}-{self.next_event}"

    def session_start(self) -> int:
        hour = self.rng.choices(range(self.config.hours), weights=self.hour_weights)[0]
        return self.start_ms + hour * HOUR_MS + self.rng.randrange(HOUR_MS)

    def beacons(self) -> list[dict]:
        out: list[dict] = []
        for n in range(self.config.visitors):
            visitor = f"v-{n}"
            variants = {
                spec.id: v
                for spec in self.config.experiments
                if (v := assign(spec, visitor, self.config.seed)) is not None
            }
            effect = _combined(self.config.experiments, variants)
            sessions = 1 + min(3, int(self.rng.expovariate(1.2)))
            for k in range(sessions):
                ts = self.session_start()
                for _ in range(1 + min(2, int(self.rng.expovariate(1.5)))):
                    ts = self.visit(out, visitor, f"s-{n}-{k}", ts, variants, effect)
                    ts += self.rng.randrange(40 * MINUTE_MS, 180 * MINUTE_MS)
        return [b for b in out if b["ts"] < self.end_ms]

    def visit(
        self,
        out: list,
        visitor: str,
        session: str,
        ts: int,
        variants: dict[str, str],
        effect: Effect,
    ) -> int:
        """Append one visit's beacons; return the ts of its last beacon."""
        rng = self.rng
        # A visitor qualifies on reaching a qualifying page and stays qualified for the
        # rest of the visit, as a client-side trigger would mark it.
        qualified: set[str] = set()
        pages = [rng.choice(("/", "/", "/search"))]
        if rng.random() >= BOUNCE_SHARE:
            length = 1 + max(1, round(rng.expovariate(1 / 3.5) * effect.page_views))
            pages += [
                rng.choice(
                    ("/search", f"/product/{rng.randrange(200)}", f"/product/{rng.randrange(200)}")
                )
                for _ in range(length - 1)
            ]
            if rng.random() < min(1.0, BASE_ORDER_RATE * effect.order_rate):
                pages += ["/cart", "/checkout", "order"]
        for i, page in enumerate(pages):
            if i:
                ts += min(8 * MINUTE_MS, 5_000 + int(rng.expovariate(1 / 50_000)))
            if page == "order":
                order = {
                    "order_id": f"o-{self.config.seed}-{self.next_order}",
                    "revenue": round(rng.lognormvariate(3.6, 0.5) * effect.revenue, 2),
                    "units": rng.randint(1, 4),
                }
                self.next_order += 1
                out.append(
                    self.beacon(
                        visitor, session, ts, "order", "/checkout", variants, qualified, order=order
                    )
                )
                if rng.random() < RELOAD_SHARE:
                    ts += rng.randrange(2_000, 30_000)
                    out.append(
                        self.beacon(
                            visitor,
                            session,
                            ts,
                            "order",
                            "/checkout",
                            variants,
                            qualified,
                            order=dict(order),
                        )
                    )
                continue
            if rng.random() < BASE_ERROR_RATE * effect.error_rate:
                out.append(
                    self.beacon(
                        visitor,
                        session,
                        ts,
                        "error",
                        page,
                        variants,
                        qualified,
                        error={"code": rng.choice((500, 502, 404))},
                    )
                )
                continue
            perf = None
            if rng.random() < 0.9:
                load = rng.lognormvariate(math.log(900), 0.4) * effect.page_load
                perf = {"page_load_ms": int(load)}
            out.append(
                self.beacon(visitor, session, ts, "page_view", page, variants, qualified, perf=perf)
            )
            if page.startswith("/product/") and rng.random() < 0.25:
                ts += rng.randrange(3_000, 40_000)
                out.append(
                    self.beacon(visitor, session, ts, "add_to_cart", page, variants, qualified)
                )
        return ts

    def beacon(
        self,
        visitor: str,
        session: str,
        ts: int,
        type_: str,
        page: str,
        variants: dict[str, str],
        qualified: set[str],
        **extra: dict | None,
    ) -> dict:
        qualified.update(s.id for s in self.config.experiments if page in s.qualify_pages)
        data = {
            "event_id": self.event_id(),
            "visitor_id": visitor,
            "session_id": session,
            "ts": ts,
            "type": type_,
            "page": page,
            "experiments": [
                {
                    "id": spec.id,
                    "variant": variants[spec.id],
                    "qualified": spec.id in qualified,
                }
                for spec in self.config.experiments
                if spec.id in variants
            ],
        }
        data.update({k: v for k, v in extra.items() if v is not None})
        return data


def _dumps(data: object) -> str:
    return json.dumps(data, separators=(",", ":"))


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
    """Yield (landing hour key, line, kind) in time order; kind is clean, duplicate or a reason."""
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
    for position, beacon in enumerate(clean):
        key = hour_key(hour_of_ms(beacon["ts"]))
        yield key, _dumps(beacon), "clean"
        for line, kind in extra.get(position, ()):
            yield key, line, kind


def write_landing(
    config: GeneratorConfig,
    landing_dir: Path,
    progress: Callable[[str], None] | None = None,
) -> GenerationReport:
    """Write one file per hour, `hour=<key>/part-<seed>.json`; re-running rewrites the same."""
    report = GenerationReport()
    by_hour: dict[str, list[str]] = defaultdict(list)
    for key, line, kind in iter_lines(config):
        by_hour[key].append(line)
        report.kinds_by_hour[key][kind] += 1
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
