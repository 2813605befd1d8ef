"""Trap sessions: valid traffic at the edges of every visit, duplicate and population rule
of METRICS.md, one kind per rule (TRAP_KINDS), with when each line arrives in the stream.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from expo_platform.core.hours import HOUR_MS, hour_start_ms
from expo_platform.devtools.traffic_model import MINUTE_MS, ExperimentSpec, _dumps, _unit, _variants

if TYPE_CHECKING:
    from expo_platform.devtools.generator import GeneratorConfig

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
