"""Live traffic: endless beacons at about a given rate, stamped from a start time on, in
arrival order, for the Kafka producer.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

from expo_platform.core.hours import HOUR_MS
from expo_platform.devtools.generator import GeneratorConfig, _tagged_lines
from expo_platform.devtools.traffic_model import MINUTE_MS
from expo_platform.errors import ExpoError

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
