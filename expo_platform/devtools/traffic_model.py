"""The realistic traffic of the generator: experiments and their true effects, visitors'
variants, and the clean beacons of a period, visit by visit.

Visitors have several sessions, sessions several visits (gaps over 35 minutes), visits cross
hour boundaries; experiments have 2 or 3 variants with configurable true effects.
Deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from types import MappingProxyType
from typing import TYPE_CHECKING

from expo_platform.core.hours import HOUR_MS, hour_start_ms

if TYPE_CHECKING:
    from expo_platform.devtools.generator import GeneratorConfig

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


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (not Python's salted hash())."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def propensity(seed: int, visitor: str, sigma: float) -> float:
    """A visitor's lasting activity, log-normal with mean 1 (1 for everyone when sigma = 0):
    its sessions, pages and order rate are scaled by it on every day. Drawn from a hash, so
    it leaves the generator's random stream as it is."""
    if sigma <= 0:
        return 1.0
    u = min(max(_unit(seed, "propensity", visitor), 1e-12), 1 - 1e-12)
    return math.exp(sigma * NormalDist().inv_cdf(u) - sigma * sigma / 2)


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
        start = config.experiments_from
        self.experiments_from_ms = None if start is None else hour_start_ms(start)

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
            lasting = propensity(self.config.seed, visitor, self.config.propensity)
            sessions = 1 + min(3, int(self.rng.expovariate(1.2 / lasting)))
            for k in range(sessions):
                ts = self.session_start()
                for _ in range(1 + min(2, int(self.rng.expovariate(1.5)))):
                    session = f"s-{self.config.id_prefix}{n}-{k}"
                    before = self.experiments_from_ms is not None and ts < self.experiments_from_ms
                    ts = self.visit(
                        out,
                        visitor,
                        session,
                        ts,
                        {} if before else variants,
                        NO_EFFECT if before else effect,
                        lasting,
                    )
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
        lasting: float = 1.0,
    ) -> int:
        """Append one visit's beacons; return the ts of its last beacon."""
        rng = self.rng
        # A visitor qualifies on reaching a qualifying page and stays qualified for the
        # rest of the visit, as a client-side trigger would mark it.
        qualified: set[str] = set()
        pages = [rng.choice(("/", "/", "/search"))]
        if rng.random() >= BOUNCE_SHARE:
            length = 1 + max(1, round(rng.expovariate(1 / 3.5) * effect.page_views * lasting))
            pages += [
                rng.choice(
                    ("/search", f"/product/{rng.randrange(200)}", f"/product/{rng.randrange(200)}")
                )
                for _ in range(length - 1)
            ]
            if rng.random() < min(1.0, BASE_ORDER_RATE * effect.order_rate * lasting):
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
