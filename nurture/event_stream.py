"""Tracking hits travel through a Redis stream, then into the database in batches.

The request path only runs ``publish`` (one XADD, well under a millisecond): no
database transaction per hit. ``drain`` reads the stream with a consumer group,
writes the events in one transaction per batch and acknowledges them only after
the commit: a drainer that dies leaves its entries pending, and the next one
takes them over (XAUTOCLAIM) after ``CLAIM_IDLE_MS``. Each event stores its
stream entry id as ``source_id`` (unique), so an entry written twice is stored
once: at least once in, exactly once stored. If Redis cannot be reached, the
hit is written straight to the database instead; it is never dropped.

The stream is ``nurture:events:<queue name>``: installations sharing a Redis
keep apart. Scanner detection looks at a message's clicks as a whole: a trap
click or a burst flags the clicks around it, including ones stored earlier.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Callable

import redis
from sqlmodel import Session, select

from .clock import parse_instant
from .machine_detection import BURST_LINKS, BURST_SECONDS, TRAP_WINDOW_SECONDS, judge
from .models import Event, Message
from .tracking import TRAP_URL

log = logging.getLogger(__name__)
GROUP = "nurture-drain"
CLAIM_IDLE_MS = 60_000
OnEvents = Callable[[Session, list[Event]], None]


def stream_key(namespace: str) -> str:
    return f"nurture:events:{namespace}"


def publish(connection: redis.Redis, stream: str, hit: dict[str, str]) -> str:
    return connection.xadd(stream, hit).decode()


def ensure_group(connection: redis.Redis, stream: str) -> None:
    try:
        connection.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def drain(session: Session, connection: redis.Redis, stream: str, consumer: str, count: int = 2000,
          on_events: OnEvents | None = None) -> int:
    """Move up to ``count`` hits from the stream into the database; return how many were stored."""
    ensure_group(connection, stream)
    entries = []
    _next, claimed, *_ = connection.xautoclaim(stream, GROUP, consumer, min_idle_time=CLAIM_IDLE_MS, start_id="0-0", count=count)
    entries += [(entry_id, fields) for entry_id, fields in claimed if fields]
    if len(entries) < count:
        for _stream, items in connection.xreadgroup(GROUP, consumer, {stream: ">"}, count=count - len(entries)) or []:
            entries += items
    if not entries:
        return 0
    hits = [(entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()}) for entry_id, fields in entries]
    stored = store_hits(session, hits, on_events)
    ids = [entry_id for entry_id, _ in hits]
    connection.xack(stream, GROUP, *ids)
    connection.xdel(stream, *ids)
    return stored


def store_hits(session: Session, hits: list[tuple[str, dict[str, str]]], on_events: OnEvents | None = None) -> int:
    """Judge and store hits (``source_id`` dedupes); commit; return the number of new events."""
    known = set(session.exec(select(Event.source_id).where(Event.source_id.in_([sid for sid, _ in hits]))).all())
    hits = [(sid, hit) for sid, hit in hits if sid not in known and hit.get("message_id", "").isdigit()]
    messages = {m.id: m for m in session.exec(
        select(Message).where(Message.id.in_({int(hit["message_id"]) for _, hit in hits})))}
    events = []
    for source_id, hit in sorted(hits, key=lambda item: item[1].get("at", "")):
        message = messages.get(int(hit["message_id"]))
        if message is None:
            continue
        at = parse_instant(hit["at"])
        url = hit.get("url", "")
        seconds = (at - message.sent_at).total_seconds() if message.sent_at else None
        machine, reasons = judge(hit["kind"], hit.get("method", "GET"), hit.get("ua", ""), seconds, trap=url == TRAP_URL)
        data = {"reasons": reasons, "user_agent": hit.get("ua", "")[:300], "ip": hit.get("ip", "")}
        if url:
            data["url"] = url[:2000]
        events.append(Event(lead_id=message.lead_id, message_id=message.id, kind=hit["kind"], is_machine=machine,
                            occurred_at=at, source_id=source_id, data=data))
    session.add_all(events)
    session.flush()
    _flag_scanner_clicks(session, [e for e in events if e.kind == "click"])
    if on_events:
        on_events(session, events)
    session.commit()
    return len(events)


def _flag_scanner_clicks(session: Session, new_clicks: list[Event]) -> None:
    """Mark as machine every click near a trap click or inside a burst, before or after it.

    Only clicks within the rules' time window of the new ones are looked at, so a
    message clicked thousands of times costs no more than one clicked twice.
    """
    reach = timedelta(seconds=max(TRAP_WINDOW_SECONDS, BURST_SECONDS) * 2)
    spans: dict[int, tuple[datetime, datetime]] = {}
    for click in new_clicks:
        lo, hi = spans.get(click.message_id, (click.occurred_at, click.occurred_at))
        spans[click.message_id] = (min(lo, click.occurred_at), max(hi, click.occurred_at))
    if not spans:
        return
    clicks: dict[int, list[Event]] = defaultdict(list)
    earliest = min(lo for lo, _ in spans.values()) - reach
    latest = max(hi for _, hi in spans.values()) + reach
    for event in session.exec(select(Event).where(  # one query for the batch, then each message's own window
            Event.message_id.in_(list(spans)), Event.kind == "click",
            Event.occurred_at >= earliest, Event.occurred_at <= latest)):
        lo, hi = spans[event.message_id]
        if lo - reach <= event.occurred_at <= hi + reach:
            clicks[event.message_id].append(event)
    for events in clicks.values():
        traps = [e.occurred_at for e in events if (e.data or {}).get("url") == TRAP_URL]
        for event in events:
            if event.is_machine:
                continue
            if any(abs((event.occurred_at - t).total_seconds()) <= TRAP_WINDOW_SECONDS for t in traps):
                reason = "a click on the hidden trap link of this message came with it"
            else:
                near = {(e.data or {}).get("url") for e in events
                        if abs((e.occurred_at - event.occurred_at).total_seconds()) <= BURST_SECONDS}
                if len(near) < BURST_LINKS:
                    continue
                reason = f"{len(near)} links of the message clicked within {BURST_SECONDS:g} s"
            event.is_machine = True
            event.data = {**(event.data or {}), "reasons": [reason]}
            session.add(event)
    session.flush()


def record(connection: redis.Redis | None, stream: str, database_url: str, hit: dict[str, str],
           on_events: OnEvents | None = None) -> None:
    """Publish a hit; if Redis fails, store it directly. Raises only if both fail."""
    try:
        if connection is None:
            raise redis.ConnectionError("no Redis configured")
        publish(connection, stream, hit)
    except redis.RedisError as exc:
        from .db import engine_for

        log.warning("Redis unavailable (%s); storing a %s event directly", exc, hit.get("kind"))
        with Session(engine_for(database_url), expire_on_commit=False) as session:
            store_hits(session, [(f"direct-{uuid.uuid4().hex}", hit)], on_events)
