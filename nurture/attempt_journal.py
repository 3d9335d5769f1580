"""A journal of SMTP attempts in Redis: what lets workers claim messages per chunk.

The worker claims a chunk of messages (``queued`` -> ``sending``) in one commit,
then, for each one, journals ``started`` right before the SMTP transaction and
the server's answer after it; outcomes reach the database with the next chunk's
commit, and only then are the entries removed. When a worker dies, its
messages stay ``sending`` until their lease ends, and recovery
(``scheduling.expire_sending``) reads the journal: an answer is recorded as it
was, ``started`` without an answer is the one message that may or may not have
been delivered (failed, never resent), and no entry means the message was never
handed over (queued again). So a crash costs at most one ambiguous message per
worker, as a commit per message would, at a fraction of the database work.

The journal is one hash per installation (``nurture:attempts:<queue name>``,
field = message id), written with one HSET per message: the answer to the
previous message travels with the start of the next.
"""

from __future__ import annotations

import redis

STARTED = "started"


class AttemptJournal:
    def __init__(self, connection: redis.Redis, namespace: str) -> None:
        self.connection = connection
        self.key = f"nurture:attempts:{namespace}"
        self._answers: list[str] = []  # field, value, field, value ... not yet written

    def started(self, message_id: int) -> None:
        """Journal the start of an attempt, with the answers noted since the last write."""
        self.connection.execute_command("HSET", self.key, *self._answers, message_id, STARTED)
        self._answers.clear()

    def finished(self, message_id: int, outcome: str, answer: str) -> None:
        """Note the answer (``sent``, ``retry`` or ``failed``): written with the next start or ``flush``.

        Until then the entry says ``started``: a worker dying in that instant
        leaves this one message "may have been delivered", exactly as dying
        during its transaction would, so a crash still costs at most one.
        """
        self._answers += [str(message_id), f"{outcome}|{answer[:900]}"]

    def flush(self) -> None:
        if self._answers:
            self.connection.execute_command("HSET", self.key, *self._answers)
            self._answers.clear()

    def forget(self, message_ids: list[int]) -> None:
        """Drop entries whose outcome is committed to the database."""
        if message_ids:
            self.connection.hdel(self.key, *message_ids)

    def lookup(self, message_ids: list[int]) -> dict[int, tuple[str, str] | None]:
        """message id -> (outcome, answer), ("started", "") or None when never attempted."""
        values = self.connection.hmget(self.key, message_ids) if message_ids else []
        found: dict[int, tuple[str, str] | None] = {}
        for message_id, value in zip(message_ids, values):
            if value is None:
                found[message_id] = None
            else:
                outcome, _, answer = value.decode("utf-8", "replace").partition("|")
                found[message_id] = (outcome, answer)
        return found
