"""Several processes at once: schedulers claiming together, a worker killed mid-batch."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from nurture import db
from nurture.models import Enrollment, Message, Step
from nurture.scheduling import run_tick

from conftest import BACKEND, NURTURE_BIN, iso, wait_until


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    return children


def is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def enroll_many(n, count: int) -> None:
    """``count`` leads in Moscow, enrolled, and the clock where all first contacts are due."""
    rows = "".join(f"lead{i}@example.com,Lead{i},Europe/Moscow\n" for i in range(count))
    assert n.import_csv("email,first_name,timezone\n" + rows).created == count
    assert n.enroll().enrolled == count
    n.at(max(e.next_run_at for e in n.enrollments()))


def test_two_schedulers_claiming_at_once_get_disjoint_work(team):
    if BACKEND == "sqlite":
        pytest.skip("concurrent claims with FOR UPDATE SKIP LOCKED are PostgreSQL's; CI runs this on its PostgreSQL pass")
    n = team
    n.load_campaigns()
    enroll_many(n, 2000)
    settings = dataclasses.replace(n.settings, claim_batch_size=50)  # many small rounds that interleave
    engine = db.engine_for(settings.database_url)
    barrier = threading.Barrier(2)
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def scheduler(name: str) -> None:
        try:
            with Session(engine, expire_on_commit=False) as session:  # each its own session
                barrier.wait()
                run_tick(session, settings, settings.clock.now(), claimed[name].extend)
        except BaseException as exc:  # a duplicate claim would surface as an IntegrityError here
            errors.append(exc)

    threads = [threading.Thread(target=scheduler, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    a, b = claimed["a"], claimed["b"]
    assert a and b, "both schedulers should have found work"
    assert not set(a) & set(b)
    assert len(a) + len(b) == len(set(a) | set(b)) == 2000
    per_pair = n.all(select(Message.enrollment_id, Message.step_id, sa.func.count()).group_by(Message.enrollment_id, Message.step_id))
    assert len(per_pair) == 2000 and {count for _, _, count in per_pair} == {1}
    follow_up = n.scalar(select(Step.id).where(Step.key == "follow-up"))
    assert {e.next_step_id for e in n.enrollments()} == {follow_up}


def test_worker_killed_mid_batch_sends_nothing_twice_and_loses_no_step(team, monkeypatch):
    n = team
    n.load_campaigns()
    count = 40
    enroll_many(n, count)
    monkeypatch.setenv("NURTURE_SEND_BATCH", "10")
    n.settings = dataclasses.replace(n.settings, send_batch_size=10)
    first_tick = n.now
    assert n.tick().messages == count
    assert len(n.enqueued) == 1 and len(n.enqueued[0]) == count

    n.smtp.delay = 0.05  # a slow server, so the kill lands in the middle
    log = open(n.tmp_path / "worker1.log", "wb")
    worker = subprocess.Popen([str(NURTURE_BIN), "worker", "--burst"], env=dict(os.environ),
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    horses: list[int] = []
    try:
        wait_until(lambda: len(n.smtp.messages) >= 12 or worker.poll() is not None, timeout=30, what="12 messages")
        # RQ runs each job in a forked work horse in its own process group: kill both, like a
        # machine dying (killing only the worker would leave the horse to finish the batch).
        horses = child_pids(worker.pid)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        for horse in horses:
            os.kill(horse, signal.SIGKILL)
        worker.wait(10)
        log.close()
    assert horses, "the worker had no work horse running at the kill"
    for horse in horses:
        wait_until(lambda: not is_running(horse), timeout=10, what=f"work horse {horse} to die")
    received_at_kill = len(n.smtp.messages)
    assert 12 <= received_at_kill < count, (n.tmp_path / "worker1.log").read_text()
    statuses = Counter(m.status for m in n.messages())
    # Claims are made a chunk at a time; the attempt journal in Redis tells recovery
    # which of the claimed messages were handed over and which never were.
    assert statuses["sending"] <= n.settings.send_chunk and statuses["queued"] > 0

    # A later tick (past the lease) takes the work up again; a new worker finishes it.
    later = first_tick + timedelta(seconds=n.settings.lease_seconds + 1)
    n.at(later)
    n.smtp.delay = 0
    proc = n.cli("scheduler", "--once", "--now", iso(later), check=True)
    assert f"expired {statuses['sending']}" in proc.stdout
    requeued = int(re.search(r"requeued (\d+)", proc.stdout).group(1))
    assert statuses["queued"] <= requeued <= statuses["queued"] + statuses["sending"]
    n.cli("worker", "--burst", check=True)

    messages = n.messages()
    received_ids = Counter(raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode() for _, _, raw in n.smtp.messages)
    assert all(times == 1 for times in received_ids.values()), received_ids.most_common(3)
    # No step lost: every enrollment has its first-contact message.
    first_contact = n.scalar(select(Step.id).where(Step.key == "first-contact"))
    assert sorted(m.enrollment_id for m in messages if m.step_id == first_contact) == [e.id for e in n.enrollments()]
    final = Counter(m.status for m in messages)
    assert final["sent"] + final["failed"] == count and final["failed"] <= 1
    for message in messages:
        if message.status == "failed":
            assert "worker stopped during the SMTP transaction" in message.error
        else:
            assert message.message_id in received_ids
    assert set(received_ids) <= {m.message_id for m in messages}
    assert final["sent"] <= len(received_ids) <= final["sent"] + final["failed"]
    assert {e.status for e in n.enrollments()} == {"active"}
    assert n.count(Enrollment, Enrollment.next_step_id == first_contact) == 0


def test_two_workers_running_the_same_batch_at_once_send_each_message_once(team):
    from nurture import tasks

    n = team
    n.load_campaigns()
    enroll_many(n, 30)
    n.tick()
    (ids,) = n.enqueued
    n.smtp.delay = 0.005  # keep both workers inside the batch at the same time
    barrier = threading.Barrier(2)
    reports: list[dict] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            reports.append(tasks.send_messages(ids))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sum(r["sent"] for r in reports) == 30, reports
    assert sum(r["sent"] + r["ignored"] for r in reports) == 60
    received_ids = Counter(raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode() for _, _, raw in n.smtp.messages)
    assert len(received_ids) == 30 and set(received_ids.values()) == {1}
    assert {m.status for m in n.messages()} == {"sent"}
