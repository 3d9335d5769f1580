"""Tracking hits travel through the Redis stream and are stored exactly once (invariant 4).

A hit is published during the request and stored only when drained (by ``Periodic.run``,
which the scheduler calls every tick, or ``nurture events drain``). Redelivery (a drainer
that died after its commit and before XACK, entries left pending by a dead consumer) never
stores an event twice. Under load, every hit that got a 200 or a 302 is exactly one event,
also through a real gunicorn with two worker processes.
"""

from __future__ import annotations

import html as html_lib
import http.client
import os
import re
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import redis
from sqlmodel import select

from nurture import event_stream as stream_module
from nurture.event_stream import GROUP, drain, ensure_group, publish, store_hits
from nurture.models import Event
from nurture.periodic import Periodic

from conftest import LINK_URLS, REPO, free_port, received_by, start_links, wait_until

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
HREF = re.compile(r"""href="(https://nurture\.example\.com/c/[^"]+)\"""")
IMG = re.compile(r"""src="(https://nurture\.example\.com/o/[^"]+)\"""")


def tracking_paths(n) -> dict[str, dict[str, list[str]]]:
    """email -> {"opens": [pixel path], "clicks": [click paths, trap excluded]} from the received mail."""
    out = {}
    for email, messages in received_by(n).items():
        html = messages[0].get_body(("html",)).get_content()
        def path(url):
            parts = urlsplit(html_lib.unescape(url))
            return parts.path + (f"?{parts.query}" if parts.query else "")
        out[email] = {"opens": [path(u) for u in IMG.findall(html)],
                      "clicks": [path(u) for u in HREF.findall(html) if "trap.invalid" not in u]}
    return out


@pytest.fixture
def tracked(nurture):
    n = nurture
    first = start_links(n)
    n.advance(minutes=5)
    return n, first, tracking_paths(n)


def hits_for(message_id: int, count: int, at: str = "2026-03-02T10:00:00+00:00") -> list[dict[str, str]]:
    return [{"kind": "open" if i % 2 else "click", "message_id": str(message_id), "url": "" if i % 2 else LINK_URLS[0],
             "at": at, "method": "GET", "ua": BROWSER, "ip": "198.51.100.7"} for i in range(count)]


def test_hits_are_published_during_the_request_and_stored_only_when_drained(tracked, web, redis_conn, event_stream):
    n, first, paths = tracked
    app = web()
    olga = paths["olga@example.com"]
    assert app.get(olga["opens"][0], headers={"User-Agent": BROWSER}).status_code == 200
    assert app.get(olga["clicks"][0], headers={"User-Agent": BROWSER}).status_code == 302
    assert n.count(Event) == 0
    assert redis_conn.xlen(event_stream) == 2
    with n.session() as session:
        lines = Periodic(n.settings, n.redis).run(session)
    assert lines == ["stored 2 tracking event(s)"]
    events = n.all(select(Event).order_by(Event.id))
    assert [(e.kind, e.message_id, e.is_machine) for e in events] == [
        ("open", first["olga@example.com"].id, False), ("click", first["olga@example.com"].id, False)]
    assert redis_conn.xlen(event_stream) == 0  # acknowledged and deleted
    with n.session() as session:  # nothing left: a second run stores nothing
        assert Periodic(n.settings, n.redis).run(session) == []
    assert n.count(Event) == 2


def test_events_drain_command_stores_published_hits(tracked, web, redis_conn, shared_event_stream):
    n, first, paths = tracked
    app = web()
    for email in paths:
        assert app.get(paths[email]["opens"][0], headers={"User-Agent": BROWSER}).status_code == 200
    assert n.count(Event) == 0
    proc = n.cli("events", "drain")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert n.count(Event) == 2
    assert redis_conn.xlen(shared_event_stream) == 0


def test_the_same_stream_entries_stored_twice_are_stored_once(tracked, event_stream):
    n, first, _ = tracked
    message = first["john@example.net"]
    hits = [(f"1700000000000-{i}", hit) for i, hit in enumerate(hits_for(message.id, 6))]
    with n.session() as session:
        assert store_hits(session, hits) == 6
    with n.session() as session:  # the drainer crashed after its commit, before XACK: delivered again
        assert store_hits(session, hits) == 0
    with n.session() as session:  # and once more, mixed with two new entries
        more = [(f"1700000000001-{i}", hit) for i, hit in enumerate(hits_for(message.id, 2))]
        assert store_hits(session, hits[:3] + more) == 2
    assert n.count(Event) == 8
    assert len({e.source_id for e in n.all(select(Event))}) == 8


class AckFails:
    """A Redis connection whose XACK fails: the drainer dies after its commit."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection

    def xack(self, *args, **kwargs):
        raise redis.ConnectionError("drainer killed before XACK")

    def __getattr__(self, name):
        return getattr(self.connection, name)


def test_drainer_dying_after_commit_before_ack_causes_no_duplicate(tracked, redis_conn, event_stream, monkeypatch):
    n, first, _ = tracked
    monkeypatch.setattr(stream_module, "CLAIM_IDLE_MS", 100)
    for hit in hits_for(first["olga@example.com"].id, 5):
        publish(redis_conn, event_stream, hit)
    with n.session() as session, pytest.raises(redis.ConnectionError):
        drain(session, AckFails(redis_conn), event_stream, "dies")
    assert n.count(Event) == 5  # committed, never acknowledged
    assert redis_conn.xpending(event_stream, GROUP)["pending"] == 5
    with n.session() as session:  # too early: another consumer cannot claim them yet
        assert drain(session, redis_conn, event_stream, "takes-over") == 0
    time.sleep(0.15)
    with n.session() as session:
        assert drain(session, redis_conn, event_stream, "takes-over") == 0  # claimed, recognised, acknowledged
    assert n.count(Event) == 5
    assert redis_conn.xpending(event_stream, GROUP)["pending"] == 0
    assert redis_conn.xlen(event_stream) == 0


def test_entries_left_pending_by_a_dead_consumer_are_taken_over_after_the_idle_time(tracked, redis_conn, event_stream, monkeypatch):
    n, first, _ = tracked
    monkeypatch.setattr(stream_module, "CLAIM_IDLE_MS", 200)
    for hit in hits_for(first["john@example.net"].id, 4):
        publish(redis_conn, event_stream, hit)
    ensure_group(redis_conn, event_stream)
    read = redis_conn.xreadgroup(GROUP, "crashed-before-commit", {event_stream: ">"}, count=100)
    assert len(read[0][1]) == 4  # read, never stored, never acknowledged
    publish(redis_conn, event_stream, hits_for(first["john@example.net"].id, 1)[0])  # and one new hit
    with n.session() as session:
        assert drain(session, redis_conn, event_stream, "live") == 1  # the new one only: the others are not idle yet
    assert n.count(Event) == 1
    time.sleep(0.25)
    with n.session() as session:
        assert drain(session, redis_conn, event_stream, "live") == 4
    with n.session() as session:
        assert drain(session, redis_conn, event_stream, "live") == 0
    assert n.count(Event) == 5
    assert redis_conn.xpending(event_stream, GROUP)["pending"] == 0


# --- a real gunicorn -----------------------------------------------------------------------------

@pytest.fixture
def gunicorn(tracked):
    n = tracked[0]
    port = free_port()
    log = open(n.tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "gunicorn"), "-b", f"127.0.0.1:{port}", "-w", "2",
                             "--log-level", "warning", "wsgi:app"],
                            cwd=REPO, env=dict(os.environ), start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)

    def answers():
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited: {(n.tmp_path / 'gunicorn.log').read_text()[-2000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    try:
        wait_until(answers, timeout=20, interval=0.05, what="gunicorn to answer /healthz")
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def test_every_answered_hit_of_500_concurrent_requests_to_gunicorn_is_exactly_one_event(tracked, gunicorn, redis_conn,
                                                                                      shared_event_stream):
    n, first, paths = tracked
    requests = []
    for i in range(500):
        email = ("olga@example.com", "john@example.net")[i % 2]
        kind = "opens" if i % 5 < 2 else "clicks"
        options = paths[email][kind]
        requests.append(options[i % len(options)])

    def get(path: str) -> tuple[str, int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", gunicorn, timeout=30)
        try:
            conn.request("GET", path, headers={"User-Agent": BROWSER})
            response = conn.getresponse()
            body = response.read()
            return path, response.status, response.getheader("Location") or body[:6].decode("latin-1")
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=25) as pool:
        results = list(pool.map(get, requests))
    statuses = Counter(status for _, status, _ in results)
    assert set(statuses) <= {200, 302}, statuses
    assert statuses[200] == sum(1 for p in requests if p.startswith("/o/"))
    for path, status, where in results:
        if status == 302:
            assert where in LINK_URLS
        else:
            assert where in ("GIF89a", "GIF87a")
    assert n.count(Event) == 0  # nothing written on the request path
    with n.session() as session:
        lines = Periodic(n.settings, n.redis).run(session)
    assert lines == ["stored 500 tracking event(s)"]
    events = n.all(select(Event))
    assert len(events) == 500 and len({e.source_id for e in events}) == 500
    assert Counter(e.kind for e in events) == {"open": statuses[200], "click": statuses[302]}
    by_message = Counter(e.message_id for e in events)
    assert by_message == {first["olga@example.com"].id: 250, first["john@example.net"].id: 250}
    assert redis_conn.xlen(shared_event_stream) == 0
