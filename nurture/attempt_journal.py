"""A journal of SMTP attempts in Redis: what lets workers claim messages per chunk.

The worker claims a chunk of messages (``queued`` -> ``sending``) in one commit,
then, for each one, writes ``started`` here right before the SMTP transaction
and the server's answer right after it; outcomes reach the database with the
next chunk's commit. When a worker dies, its messages stay ``sending`` until
their lease ends, and recovery (``scheduling.expire_sending``) reads this
journal: an answer is recorded as it was, ``started`` without an answer is the
one message that may or may not have been delivered (failed, never resent),
and no entry means the message was never handed over (queued again). So a
crash costs at most one ambiguous message per worker, as with a commit per
message, at a fraction of the database work.

Entries expire after ``ttl`` seconds (longer than any lease).
"""

from __future__ import annotations

import redis

STARTED = "started"


class AttemptJournal:
    """Entries live under ``nurture:attempt:<namespace>:<message id>``; the namespace
    (the queue name) keeps two installations sharing a Redis apart."""

    def __init__(self, connection: redis.Redis, namespace: str, ttl: int) -> None:
        self.connection = connection
        self.prefix = f"nurture:attempt:{namespace}:"
        self.ttl = ttl

    def started(self, message_id: int) -> None:
        self.connection.set(self.prefix + str(message_id), STARTED, ex=self.ttl)

    def finished(self, message_id: int, outcome: str, answer: str) -> None:
        """``outcome`` is ``sent``, ``retry`` or ``failed``; ``answer`` the server's words."""
        self.connection.set(self.prefix + str(message_id), f"{outcome}|{answer[:900]}", ex=self.ttl)

    def lookup(self, message_ids: list[int]) -> dict[int, tuple[str, str] | None]:
        """message id -> (outcome, answer), ("started", "") or None when never attempted."""
        values = self.connection.mget([self.prefix + str(i) for i in message_ids]) if message_ids else []
        found: dict[int, tuple[str, str] | None] = {}
        for message_id, value in zip(message_ids, values):
            if value is None:
                found[message_id] = None
            else:
                outcome, _, answer = value.decode("utf-8", "replace").partition("|")
                found[message_id] = (outcome, answer)
        return found
