"""Synthetic click stream: realistic beacons for experiments, deterministic for a seed.

Visitors have several sessions, sessions several visits (gaps over 35 minutes), visits cross
hour boundaries; experiments have 2 or 3 variants with configurable true effects. A knob
adds dirty lines: duplicates and every rejection reason, each built so that it is rejected
with exactly the reason it is counted under. Another adds trap sessions: valid traffic at the
edges of every visit, duplicate and population rule of METRICS.md (see TRAP_KINDS).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from expo_platform.core.hours import HOUR_MS, hour_key, hour_of_ms, hour_start_ms
from expo_platform.errors import ExpoError

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
VISIT_GAP_MS = 35 * MINUTE_MS  # the longest gap within a visit (METRICS.md section 2)
VISIT_SPAN_MS = 12 * HOUR_MS  # a beacon this long after a visit's first starts a new visit
# Adversarial sessions, each at the edge of a rule; the trapped visitors take them in turn.
TRAP_KINDS = (
    "long_visit",  # 3-5 hours of 35-minute gaps; 35 min + 1 ms; one-beacon visits at :59
    "late_duplicate",  # exact re-sends (orders too) arriving 1-3 hours later
    "out_of_order",  # swapped beacons, and one sent after the next hour's beacons
    "qualification_flip",  # qualified true, false, true within one visit
    "multi_variant",  # two variants of one experiment: across sessions and within a visit
    "robot",  # a beacon every 5-30 minutes for 13-15 hours: visits cut at 12 h
    "experiment_twice",  # an experiment listed twice in a beacon: the first entry counts
    "same_ts",  # two beacons at one ts; an order_id reloaded and again in a later visit
)
CHECKOUT = (("page_view", "/cart"), ("page_view", "/checkout"), ("order", "/checkout"))


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
    trap_fraction: float = 0.0  # share of visitors that also get a trap session (TRAP_KINDS)
    # Live traffic generates its arrivals piece by piece: each piece's visitors and sessions
    # get ids of their own, and their visits run on past the piece's hours instead of
    # being cut at its end.
    id_prefix: str = ""
    cut_at_end: bool = True
    # Beacons before this epoch ms are not built (the random draws are, so what follows is
    # the same): live traffic starts at the wall clock and has no use for its warm-up's past.
    keep_from_ms: int | None = None

    def validate(self) -> None:
        """Raise ExpoError on a configuration that cannot be generated."""
        if self.hours < 1:
            raise ExpoError(f"hours must be at least 1, not {self.hours}")
        if self.visitors < 1:
            raise ExpoError(f"visitors must be at least 1, not {self.visitors}")
        if not 0.0 <= self.dirty_fraction <= 0.5:
            raise ExpoError(f"the dirty fraction must lie in 0..0.5, not {self.dirty_fraction}")
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


def _variants(config: GeneratorConfig, visitor: str) -> dict[str, str]:
    """The visitor's variant per experiment it is enrolled in."""
    return {
        spec.id: v
        for spec in config.experiments
        if (v := assign(spec, visitor, config.seed)) is not None
    }


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
            visitor = f"v-{self.config.id_prefix}{n}"
            variants = _variants(self.config, visitor)
            effect = _combined(self.config.experiments, variants)
            sessions = 1 + min(3, int(self.rng.expovariate(1.2)))
            for k in range(sessions):
                ts = self.session_start()
                for _ in range(1 + min(2, int(self.rng.expovariate(1.5)))):
                    session = f"s-{self.config.id_prefix}{n}-{k}"
                    ts = self.visit(out, visitor, session, ts, variants, effect)
                    ts += self.rng.randrange(40 * MINUTE_MS, 180 * MINUTE_MS)
        out = [b for b in out if b is not None]  # those before keep_from_ms
        if not self.config.cut_at_end:
            return out
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
    ) -> dict | None:
        qualified.update(s.id for s in self.config.experiments if page in s.qualify_pages)
        event_id = self.event_id()
        if self.config.keep_from_ms is not None and ts < self.config.keep_from_ms:
            return None
        data = {
            "event_id": event_id,
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


@dataclass(frozen=True)
class _TrapLine:
    """One trap line as sent: where it arrives in the stream, its event hour and JSON."""

    arrival: int  # epoch ms of its place in the stream: its ts unless sent late
    seq: int  # ties keep the order the lines were built in
    ts: int
    line: str
    kind: str  # clean or duplicate, as the data-quality figures count it
    trap: str


@dataclass
class _Who:
    """A trapped visitor: its id, the trap session's id and the variants it is in."""

    visitor: str
    session: str
    variants: dict[str, str]


def _trap_plan(config: GeneratorConfig) -> list[tuple[int, str]]:
    """(visitor number, trap kind) per trap session: the share, but at least one per kind."""
    if config.trap_fraction == 0:
        return []
    count = max(len(TRAP_KINDS), round(config.trap_fraction * config.visitors))
    ranked = sorted(range(config.visitors), key=lambda n: _unit(config.seed, "trap", f"v-{n}"))
    # With fewer visitors than kinds, a visitor gets several traps.
    chosen = sorted(ranked[: min(count, config.visitors)])
    return [(chosen[i % len(chosen)], TRAP_KINDS[i % len(TRAP_KINDS)]) for i in range(count)]


class _Traps:
    """Builds the trap sessions: valid beacons at the edges of the rules, and when they arrive.

    Its own rng and its own event, session and order ids, so that the realistic traffic stays
    exactly what it is without traps. Beacons outside the period are left out, so a period too
    short for a kind (a robot needs 16 hours) gets a truncated trap.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        self.config = config
        self.rng = random.Random(f"expo-traps:{config.seed}")  # str seeds hash stably
        self.start_ms = hour_start_ms(config.start)
        self.end_ms = self.start_ms + config.hours * HOUR_MS
        self.next_event = 0
        self.next_order = 0
        self.lines: list[_TrapLine] = []

    def build(self) -> list[_TrapLine]:
        """Every trap line, in stream order."""
        for i, (n, kind) in enumerate(_trap_plan(self.config)):
            visitor = f"v-{n}"
            who = _Who(visitor, f"s-{n}-t{i}", _variants(self.config, visitor))
            getattr(self, f"_{kind}")(who)
        return sorted(self.lines, key=lambda t: (t.arrival, t.seq))

    # Building blocks.

    def _at(self, hour_index: int) -> int:
        """The first ms of the period's hour `hour_index`."""
        return self.start_ms + hour_index * HOUR_MS

    def _place(self, span_hours: int) -> int:
        """A first hour index from which `span_hours` hours fit in the period (0 if none)."""
        return self.rng.randrange(max(1, self.config.hours - span_hours + 1))

    def _times(self, first: int, n: int, lo: int = 20_000, hi: int = 3 * MINUTE_MS) -> list[int]:
        """n beacon times from `first` on, browsing gaps apart."""
        out = [first]
        while len(out) < n:
            out.append(out[-1] + self.rng.randint(lo, hi))
        return out

    def _walk(self, ts: int, target: int, lo: int, hi: int) -> list[int]:
        """Times after ts ending exactly at target, gaps in [lo, hi] (needs hi >= 2 lo)."""
        out = []
        while target - ts > hi:
            ts += self.rng.randint(lo, min(hi, target - ts - lo))
            out.append(ts)
        out.append(target)
        return out

    def _browse(self, n: int) -> list[tuple[str, str]]:
        """n (type, page) steps: a landing page, then searches, products and add-to-carts."""
        rng = self.rng
        steps = [("page_view", rng.choice(("/", "/", "/search")))]
        while len(steps) < n:
            product = f"/product/{rng.randrange(200)}"
            page = rng.choice(("/search", product, product))
            steps.append(("page_view", page))
            if page.startswith("/product/") and rng.random() < 0.25:
                steps.append(("add_to_cart", page))
        return steps[:n]

    def _entries(self, variants: dict[str, str], qualified: set[str]) -> list[dict]:
        """A beacon's experiments list, in the configured order."""
        return [
            {"id": s.id, "variant": variants[s.id], "qualified": s.id in qualified}
            for s in self.config.experiments
            if s.id in variants
        ]

    def _event_id(self) -> str:
        """A fresh id, apart from the realistic traffic's e-... and the dirty lines' x-..."""
        self.next_event += 1
        return f"t-{self.config.seed}-{self.next_event}"

    def _beacon(
        self, who: _Who, session: str, ts: int, step: tuple[str, str], entries: list[dict]
    ) -> dict:
        """A valid beacon with the fields the realistic traffic has for its type."""
        rng = self.rng
        type_, page = step
        data = {
            "event_id": self._event_id(),
            "visitor_id": who.visitor,
            "session_id": session,
            "ts": ts,
            "type": type_,
            "page": page,
            "experiments": entries,
        }
        if type_ == "page_view" and rng.random() < 0.9:
            data["perf"] = {"page_load_ms": int(rng.lognormvariate(math.log(900), 0.4))}
        elif type_ == "order":
            self.next_order += 1
            data["order"] = {
                "order_id": f"o-{self.config.seed}-t{self.next_order}",
                "revenue": round(rng.lognormvariate(3.6, 0.5), 2),
                "units": rng.randint(1, 4),
            }
        elif type_ == "error":
            data["error"] = {"code": 404}
        return data

    def _run(
        self,
        who: _Who,
        session: str,
        times: list[int],
        steps: list[tuple[str, str]],
        variants: dict[str, str] | None = None,
    ) -> list[dict]:
        """One visit's beacons; qualified sticks from a qualifying page on, as in the traffic."""
        qualified: set[str] = set()
        out = []
        for ts, step in zip(times, steps, strict=True):
            qualified.update(s.id for s in self.config.experiments if step[1] in s.qualify_pages)
            entries = self._entries(variants or who.variants, qualified)
            out.append(self._beacon(who, session, ts, step, entries))
        return out

    def _order_again(self, order: dict, like: dict, ts: int) -> dict:
        """An order beacon for the same order (same order_id), in the visit of `like`."""
        base = {k: v for k, v in like.items() if k not in ("perf", "order")}
        experiments = [dict(e) for e in like["experiments"]]
        again = {**base, "event_id": self._event_id(), "ts": ts, "experiments": experiments}
        return {**again, "type": "order", "page": "/checkout", "order": dict(order)}

    def _enrolled(self, who: _Who) -> tuple[ExperimentSpec, str] | None:
        """An experiment of the visitor and its variant; enrols it in one if it is in none."""
        for spec in self.config.experiments:
            if spec.id in who.variants:
                return spec, who.variants[spec.id]
        if not self.config.experiments:
            return None
        spec = self.rng.choice(self.config.experiments)
        who.variants[spec.id] = self.rng.choice(spec.variants)
        return spec, who.variants[spec.id]

    def _other_variant(self, spec: ExperimentSpec, variant: str) -> str:
        """Another variant of the experiment (the same one if it has no other)."""
        return self.rng.choice([v for v in spec.variants if v != variant] or [variant])

    def _send(
        self, beacon: dict, trap: str, arrival: int | None = None, kind: str = "clean"
    ) -> bool:
        """Queue a line arriving at `arrival` (default its ts); False outside the period."""
        ts = beacon["ts"]
        if not self.start_ms <= ts < self.end_ms:
            return False
        when = ts if arrival is None else arrival
        self.lines.append(_TrapLine(when, len(self.lines), ts, _dumps(beacon), kind, trap))
        return True

    def _send_all(self, beacons: list[dict], trap: str) -> list[dict]:
        """Queue beacons in time; return those inside the period."""
        return [b for b in beacons if self._send(b, trap)]

    # The trap kinds, one method each (see TRAP_KINDS).

    def _long_visit(self, who: _Who) -> None:
        """A visit over 3-5 hours, then visits exactly at the 35-minute limit around hours."""
        rng, at = self.rng, self._at
        n = rng.randint(3, 5)
        h0 = self._place(n + 5)
        times = [at(h0) + rng.randrange(5 * MINUTE_MS, 20 * MINUTE_MS)]
        for k in range(h0 + 1, h0 + n):
            # Exactly 35 minutes across each boundary, the first landing on its first ms.
            before = at(k) - (VISIT_GAP_MS if k == h0 + 1 else rng.randrange(1, 20 * MINUTE_MS))
            times += self._walk(times[-1], before, 20_000, 15 * MINUTE_MS)
            times.append(before + VISIT_GAP_MS)
        browsed = len(times)
        times += self._times(times[-1], 4)[1:]
        # The visit's last beacon is 35 min + 1 ms before the next visit, in the next hour.
        last = at(h0 + n) - rng.randrange(1, 15 * MINUTE_MS)
        after = self._walk(times[-1], last, 20_000, 15 * MINUTE_MS)
        steps = [*self._browse(browsed), *CHECKOUT, *self._browse(len(after))]
        self._send_all(self._run(who, who.session, times + after, steps), "long_visit")
        visit_b = self._times(last + VISIT_GAP_MS + 1, rng.randint(2, 4))
        # One page view a moment before an hour, continued exactly 35 minutes later: no bounce.
        c0 = at(h0 + n + 2) - rng.randrange(5_000, 3 * MINUTE_MS)
        visit_c = [c0, *self._times(c0 + VISIT_GAP_MS, rng.randint(2, 3))]
        # One page view a moment before an hour, the next beacon 35 min + 1 ms later: a bounce.
        d0 = at(h0 + n + 4) - rng.randrange(5_000, 3 * MINUTE_MS)
        visit_e = self._times(d0 + VISIT_GAP_MS + 1, 2)
        for visit in (visit_b, visit_c, [d0], visit_e):
            beacons = self._run(who, who.session, visit, self._browse(len(visit)))
            self._send_all(beacons, "long_visit")

    def _late_duplicate(self, who: _Who) -> None:
        """A visit with an order; the order (twice) and a page view re-sent 1-3 hours later."""
        rng = self.rng
        h0 = self._place(5)
        times = self._times(self._at(h0) + rng.randrange(50 * MINUTE_MS), rng.randint(6, 9))
        steps = [*self._browse(len(times) - 3), *CHECKOUT]
        sent = self._send_all(self._run(who, who.session, times, steps), "late_duplicate")
        orders = [b for b in sent if b["type"] == "order"]
        views = [b for b in sent if b["type"] == "page_view"]
        resends = [(b, rng.randrange(HOUR_MS, 2 * HOUR_MS)) for b in orders]
        resends += [(b, rng.randrange(2 * HOUR_MS, 3 * HOUR_MS)) for b in orders]
        resends += [(rng.choice(views), rng.randrange(HOUR_MS, 3 * HOUR_MS))] if views else []
        for beacon, delay in resends:
            # The same JSON: a client retrying after a lost acknowledgement.
            self._send(beacon, "late_duplicate", beacon["ts"] + delay, kind="duplicate")

    def _out_of_order(self, who: _Who) -> None:
        """A visit across an hour, sent with two swapped pairs and a straggler from before it."""
        rng = self.rng
        boundary = self._at(self._place(2) + 1)
        before = sorted(rng.sample(range(boundary - 15 * MINUTE_MS, boundary), 6))
        after = sorted(rng.sample(range(boundary, boundary + 10 * MINUTE_MS), 4))
        times = before + after
        beacons = self._run(who, who.session, times, [*self._browse(7), *CHECKOUT])
        arrivals = list(times)
        arrivals[0], arrivals[1], arrivals[2], arrivals[3] = times[1], times[0], times[3], times[2]
        # The last beacon before the hour arrives after the next hour's beacons have begun.
        arrivals[5] = after[1] + rng.randint(1_000, 2 * MINUTE_MS)
        for beacon, arrival in zip(beacons, arrivals, strict=True):
            self._send(beacon, "out_of_order", arrival)

    def _qualification_flip(self, who: _Who) -> None:
        """A visit across an hour whose qualified flag for one experiment goes on, off, on."""
        if not (got := self._enrolled(who)):
            return
        spec, _ = got
        rng = self.rng
        first = self._at(self._place(2) + 1) - rng.randrange(5 * MINUTE_MS, 12 * MINUTE_MS)
        times = self._times(first, 6, hi=4 * MINUTE_MS)
        steps = self._browse(6)
        steps[1] = ("page_view", (*spec.qualify_pages, "/")[0])
        flags = (False, True, True, False, True, True)  # a client that lost its trigger state
        qualified: set[str] = set()
        for ts, step, flag in zip(times, steps, flags, strict=True):
            qualified.update(s.id for s in self.config.experiments if step[1] in s.qualify_pages)
            marked = (qualified - {spec.id}) | ({spec.id} if flag else set())
            beacon = self._beacon(who, who.session, ts, step, self._entries(who.variants, marked))
            self._send(beacon, "qualification_flip")

    def _multi_variant(self, who: _Who) -> None:
        """One variant in a first session; another in a second, and both within its visit."""
        if not (got := self._enrolled(who)):
            return
        spec, variant = got
        rng = self.rng
        h0 = self._place(3)
        one = self._times(self._at(h0) + rng.randrange(45 * MINUTE_MS), rng.randint(3, 5))
        self._send_all(self._run(who, who.session, one, self._browse(len(one))), "multi_variant")
        other = {**who.variants, spec.id: self._other_variant(spec, variant)}
        two = self._times(self._at(h0 + 1) + rng.randrange(45 * MINUTE_MS), 5)
        beacons = self._run(who, f"{who.session}b", two, self._browse(5), variants=other)
        # Mid-visit, one beacon carries the first variant again (a stale cookie).
        for entry in beacons[2]["experiments"]:
            if entry["id"] == spec.id:
                entry["variant"] = variant
        self._send_all(beacons, "multi_variant")

    def _robot(self, who: _Who) -> None:
        """A crawler: a beacon every 5-30 minutes for 13-15 hours, one of them at exactly 12 h."""
        rng = self.rng
        first = self._at(self._place(16)) + rng.randrange(HOUR_MS)
        times = [first, *self._walk(first, first + VISIT_SPAN_MS, 5 * MINUTE_MS, 30 * MINUTE_MS)]
        end = first + rng.randrange(13 * HOUR_MS, 15 * HOUR_MS + 1)
        times += self._walk(times[-1], end, 5 * MINUTE_MS, 30 * MINUTE_MS)
        steps = [
            ("error", f"/product/{n}")
            if rng.random() < 0.05
            else ("page_view", "/search" if n % 10 == 0 else f"/product/{n}")
            for n in range(len(times))
        ]
        checkout = rng.randrange(1, len(times) // 2)  # an order in the first 12 hours
        steps[checkout : checkout + 3] = CHECKOUT
        self._send_all(self._run(who, who.session, times, steps), "robot")

    def _experiment_twice(self, who: _Who) -> None:
        """A visit whose beacons list one experiment twice, differently: the first counts."""
        if not (got := self._enrolled(who)):
            return
        spec, variant = got
        rng = self.rng
        other = self._other_variant(spec, variant)
        first = self._at(self._place(1)) + rng.randrange(40 * MINUTE_MS)
        times = self._times(first, 6)
        beacons = self._run(who, who.session, times, self._browse(6))
        doubles = (  # (first entry, a later one); a missing qualified means false
            ({"variant": variant, "qualified": False}, {"variant": other, "qualified": True}),
            ({"variant": variant, "qualified": True}, {"variant": variant, "qualified": False}),
            ({"variant": variant}, {"variant": other, "qualified": True}),
        )
        for beacon, (head, tail) in zip(beacons[1::2], doubles, strict=True):
            rest = [e for e in beacon["experiments"] if e["id"] != spec.id]
            beacon["experiments"] = [{"id": spec.id, **head}, *rest, {"id": spec.id, **tail}]
        self._send_all(beacons, "experiment_twice")

    def _same_ts(self, who: _Who) -> None:
        """Two beacons at one ts; an order reloaded, and its order_id again in a later visit."""
        rng = self.rng
        t0 = self._at(self._place(4)) + rng.randrange(40 * MINUTE_MS)
        times = [t0, *self._times(t0, rng.randint(4, 6))]
        landing = self._browse(len(times) - 4)
        # The landing page's tag fired twice in the same millisecond.
        steps = [landing[0], *landing, *CHECKOUT]
        visit = self._run(who, who.session, times, steps)
        # The one sent second sorts first by event_id: the tie is broken by id, not arrival.
        first_id = visit[0]["event_id"]
        visit[0]["event_id"], visit[1]["event_id"] = f"{first_id}-b", f"{first_id}-a"
        order = visit[-1]["order"]
        visit.append(self._order_again(order, visit[-1], times[-1] + rng.randint(2_000, 30_000)))
        self._send_all(visit, "same_ts")
        # A later visit of the session shows the same order again: it counts again there.
        later = self._times(visit[-1]["ts"] + rng.randrange(40 * MINUTE_MS, 2 * HOUR_MS), 3)
        again = self._run(who, who.session, later[:2], [("page_view", "/"), CHECKOUT[1]])
        again.append(self._order_again(order, again[-1], later[2]))
        self._send_all(again, "same_ts")


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


LIVE_PIECE_MS = 10 * MINUTE_MS  # live arrivals are generated ten minutes at a time
# A visitor's sessions spread over hours: pieces that began this long before the first line
# sent bring the traffic to about 90% of its steady rate (measured: 100% after 4 hours).
LIVE_WARM_UP_MS = 2 * HOUR_MS


def _lines_per_visitor(config: GeneratorConfig) -> float:
    """Lines a visitor of one live piece sends on average, from a sample piece."""
    sample = 400
    piece = replace(config, hours=1, visitors=sample, id_prefix="calibration-", cut_at_end=False)
    return max(1.0, sum(1 for _ in _tagged_lines(piece)) / sample)


def live_lines(
    config: GeneratorConfig, rate: float, start_ms: int
) -> Iterator[tuple[int, str, str]]:
    """Endless traffic stamped from `start_ms` on, about `rate` lines per second, as
    (arrival epoch ms, line, kind) in arrival order.

    Every ten minutes a new piece of visitors arrives over the following hour (a generator
    run of its own, with its own ids) and browses, orders and leaves at the generator's
    pace, its visits running on into later hours; the pieces overlap and merge by arrival.
    Pieces start LIVE_WARM_UP_MS before `start_ms`, so the traffic is near its rate there,
    and a visit under way at `start_ms` is joined where it is.
    """
    if rate <= 0:
        raise ExpoError(f"the rate must be > 0, not {rate}")
    overlap = HOUR_MS // LIVE_PIECE_MS
    visitors = max(1, round(rate * HOUR_MS / 1000 / overlap / _lines_per_visitor(config)))
    # (arrival of the piece's next line, piece start, that line, the piece's other lines)
    pending: list[tuple[int, int, tuple, Iterator[tuple]]] = []
    piece_start = start_ms - start_ms % LIVE_PIECE_MS - LIVE_WARM_UP_MS
    while True:
        # A piece's lines all arrive at or after its start: merge every piece begun by then.
        while not pending or pending[0][0] >= piece_start:
            piece = replace(
                config,
                start=datetime.fromtimestamp(piece_start / 1000, UTC),
                hours=1,
                visitors=visitors,
                seed=config.seed * 1_000_003 + piece_start // LIVE_PIECE_MS,
                id_prefix=f"{piece_start // LIVE_PIECE_MS}-",
                cut_at_end=False,
                keep_from_ms=start_ms,
                trap_fraction=0.0,
            )
            lines = _tagged_lines(piece)
            if (head := next(lines, None)) is not None:
                heapq.heappush(pending, (head[0], piece_start, head, lines))
            piece_start += LIVE_PIECE_MS
        arrival, order, (_, _, line, kind, _), lines = heapq.heappop(pending)
        if (head := next(lines, None)) is not None:
            heapq.heappush(pending, (head[0], order, head, lines))
        # The stream lands a line by its own ts, so a line an hour off is never misfiled in
        # live traffic: it would only be a beacon from a wrong clock, late for the stream.
        if arrival >= start_ms and kind != "wrong_partition":
            yield arrival, line, kind
