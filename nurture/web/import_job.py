"""CSV lead import as an RQ job, with its progress and rejects report kept in Redis.

No Flask here. ``start_import`` stores the uploaded bytes in Redis (for a day)
and enqueues ``run_import`` on the send queue, which every ``nurture worker``
serves. The job runs ``lead_import.import_leads`` and writes its state to the
hash ``nurture:import:<id>`` as it goes (checking, writing N of M, done with
counts, or failed with the file's error); the rejected rows, each with its
line and reason, are kept as a CSV for download.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime

from redis import Redis
from rq import Queue

from ..config import Settings
from ..db import session_scope
from ..errors import ImportFileError
from ..lead_import import import_leads, rejects_csv
from ..queues import redis_connection

TTL = 24 * 3600
PREFIX = "nurture:import"


def _key(import_id: str, part: str = "") -> str:
    return f"{PREFIX}:{import_id}" + (f":{part}" if part else "")


def start_import(queue: Queue, data: bytes, filename: str, tags: list[str], user_id: int, now: datetime) -> str:
    """Keep the file and enqueue its import; return the import id."""
    import_id = secrets.token_hex(8)
    redis: Redis = queue.connection
    pipe = redis.pipeline()
    pipe.set(_key(import_id, "data"), data, ex=TTL)
    pipe.hset(_key(import_id), mapping={"state": "queued", "message": "Waiting for a worker…", "filename": filename,
                                        "user_id": user_id, "tags": json.dumps(tags), "started_at": now.isoformat(),
                                        "done": 0, "total": 0})
    pipe.expire(_key(import_id), TTL)
    pipe.execute()
    queue.enqueue("nurture.web.import_job.run_import", import_id, job_id=f"import-leads-{import_id}",
                  job_timeout=3600, result_ttl=TTL, failure_ttl=7 * 86400)
    return import_id


def status(redis: Redis, import_id: str) -> dict | None:
    raw = redis.hgetall(_key(import_id))
    if not raw:
        return None
    state = {k.decode(): v.decode() for k, v in raw.items()}
    for name in ("done", "total", "user_id", "rows", "created", "updated", "merged", "rejected"):
        if name in state:
            state[name] = int(state[name])
    return state


def rejects(redis: Redis, import_id: str) -> str | None:
    data = redis.get(_key(import_id, "rejects"))
    return data.decode("utf-8") if data is not None else None


def run_import(import_id: str) -> dict:
    """The RQ job: import the stored file, reporting progress in Redis."""
    settings = Settings.from_env()
    redis = redis_connection(settings)
    key = _key(import_id)
    data = redis.get(_key(import_id, "data"))
    if data is None:
        redis.hset(key, mapping={"state": "failed", "message": "The uploaded file expired before a worker took it."})
        return {"state": "failed"}
    tags = json.loads(redis.hget(key, "tags") or b"[]")
    redis.hset(key, mapping={"state": "running", "message": "Checking every row…"})

    def progress(done: int, total: int) -> None:
        redis.hset(key, mapping={"done": done, "total": total, "message": f"Writing leads: {done:,} of {total:,}"})

    try:
        with session_scope(settings.database_url) as session:
            report = import_leads(session, data, settings.clock.now(), settings.default_language,
                                  progress=progress, extra_tags=tags, settings=settings)
    except ImportFileError as exc:
        redis.hset(key, mapping={"state": "failed", "message": f"Nothing was imported: {exc}"})
        return {"state": "failed", "error": str(exc)}
    if report.rejected:
        redis.set(_key(import_id, "rejects"), rejects_csv(report.rejected).encode("utf-8"), ex=TTL)
    written = report.created + report.updated
    message = (f"Done: {report.created:,} created, {report.updated:,} updated, {report.merged:,} duplicates merged, "
               f"{len(report.rejected):,} rejected." if written else "Nothing was imported: no valid rows.")
    redis.hset(key, mapping={"state": "done" if written else "failed", "message": message, "rows": report.rows,
                             "created": report.created, "updated": report.updated, "merged": report.merged,
                             "rejected": len(report.rejected)})
    redis.delete(_key(import_id, "data"))
    return {"state": "done", "created": report.created, "rejected": len(report.rejected)}
