"""The RQ queue nurture sends through, and how send batches are enqueued.

Jobs carry message ids only (never objects); the job id names the batch
(``send-messages-<first>-<last>-<tag>``; RQ allows only letters, digits, ``-`` and ``_``) so the dashboard shows what a job is.
A batch enqueued twice is harmless: the worker only claims ``queued`` messages.
Schedules never live in Redis: a flush loses at most the current leases, and
``scheduling.requeue_expired`` re-enqueues those when they end.
"""

from __future__ import annotations

import secrets

from redis import Redis
from rq import Queue

from .config import Settings

SEND_JOB = "nurture.tasks.send_messages"


def redis_connection(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url)


def send_queue(settings: Settings, connection: Redis | None = None) -> Queue:
    return Queue(settings.queue_name, connection=connection or redis_connection(settings))


def enqueue_send_batches(queue: Queue, message_ids: list[int], batch_size: int, job_timeout: int) -> int:
    """Enqueue ``message_ids`` in batches with one Redis round trip; return the number of jobs."""
    ids = sorted(message_ids)
    batches = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    if not batches:
        return 0
    tag = secrets.token_hex(3)
    jobs = [
        Queue.prepare_data(SEND_JOB, args=(batch,), job_id=f"send-messages-{batch[0]}-{batch[-1]}-{tag}",
                           timeout=job_timeout, result_ttl=3600, failure_ttl=7 * 86400)
        for batch in batches
    ]
    queue.enqueue_many(jobs)
    return len(jobs)
