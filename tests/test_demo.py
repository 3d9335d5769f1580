"""``nurture demo`` end to end: the README's first command, shortened to 70 simulated days.

The demo runs as a user would start it (its own worker, scheduler, web app and
SMTP catcher; the simulated people answering over HTTP), then its database and
caught mail are read: stages moved, people were told apart from machines, a
bounce and an unsubscribe stopped their leads, reps were told about warm leads
and closed deals.
"""

from __future__ import annotations

import os
import subprocess

import sqlalchemy as sa
from sqlmodel import Session, select

from nurture import db
from nurture.models import Event, Lead, Notification, StageChange, Suppression

from conftest import NURTURE_BIN, REDIS_URL, free_port


def test_the_demo_comes_alive(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env["NURTURE_REDIS_URL"] = REDIS_URL
    workdir = tmp_path / "demo"
    proc = subprocess.run([str(NURTURE_BIN), "demo", "--headless", "--days", "70", "--speed", "345600",
                           "--dir", str(workdir), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "admin@example.com" in proc.stdout and "leads by stage" in proc.stdout

    with Session(db.engine_for(f"sqlite:///{workdir / 'nurture.db'}")) as session:
        def count(*where) -> int:
            return session.exec(select(sa.func.count()).select_from(where[0]).where(*where[1:])).one()

        stages = dict(session.exec(select(Lead.stage, sa.func.count()).group_by(Lead.stage)).all())
        assert count(StageChange, StageChange.reason == "rule", StageChange.to_stage == "engaged") >= 4
        assert count(StageChange, StageChange.reason == "rule", StageChange.to_stage == "contacted") >= 20
        assert stages.get("won", 0) >= 1 and stages.get("lost", 0) >= 1 and stages.get("archived", 0) >= 1, stages
        # 6 human clicks on an idle machine; fewer mails are answered within the 70 days when CI loads both cores
        assert count(Event, Event.kind == "click", Event.is_machine.is_(False)) >= 3
        assert count(Event, Event.kind == "open", Event.is_machine.is_(True)) >= 1  # the security gateway's fetches
        assert count(Event, Event.kind == "reply") >= 2
        assert count(Event, Event.kind == "auto_reply") >= 1
        assert {s.reason for s in session.exec(select(Suppression)).all()} >= {"bounce_hard", "unsubscribed"}
        assert count(StageChange, StageChange.reason == "manual", StageChange.to_stage == "won") >= 1
        assert count(Notification, Notification.kind == "warm_up", Notification.channel == "email",
                     Notification.status == "sent") >= 2
        assert session.exec(select(sa.func.max(Lead.probability))).one() > 0.3
    caught = [p.read_bytes() for p in (workdir / "caught").glob("*.eml")]
    assert any(b"anna.sales@example.com" in raw.split(b"\r\n\r\n")[0] for raw in caught)  # a notice reached a rep
