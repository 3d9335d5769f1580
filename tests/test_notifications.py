"""Warm-up notices: who is told, how often, and what arrives in the rep's mailbox."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlmodel import select

from nurture.models import Assignment, Lead, Notification
from nurture.notifications import notify_warm_lead

from conftest import ANNA


def warm(n, email: str, reason: str = "probability crossed 30%", replied: bool = False, probability: float = 0.34,
         why: list | None = None):
    """Call the contract the way warm-up detection does: in a transaction that then commits."""
    with n.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == email)).one()
        lead.probability = probability
        lead.probability_why = why if why is not None else [  # as nurture.probability stores them
            {"factor": "stage", "stage": "engaged", "points": 22},
            {"factor": "reply", "points": 9, "at": (n.now - timedelta(days=2)).isoformat(), "label": "stale words"}]
        s.add(lead)
        rows = notify_warm_lead(s, n.settings, lead, reason, n.now, replied=replied)
        s.commit()
        return [(r.id, r.channel, r.user_id) for r in rows]


def test_rep_email_arrives_with_cyrillic_lead_name_timeline_and_why(leads):
    rows = warm(leads, "olga@example.com")
    assert [channel for _, channel, _ in rows] == ["email"]
    leads.work()
    mails = [m for m in leads.smtp.parsed() if m["To"].addresses[0].addr_spec == ANNA]
    assert len(mails) == 1
    mail = mails[0]
    assert mail["Subject"] == 'Warm lead: Ольга Иванова (ООО "Ромашка"), 34%'
    assert mail["Auto-Submitted"] == "auto-generated"
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert "Ольга Иванова" in text and "stage engaged 22%" in text and "replied 2 days ago +9" in text
    assert f"{leads.settings.base_url}/leads/" in text
    assert "ООО &#34;Ромашка&#34;" in html or "ООО &quot;Ромашка&quot;" in html
    row = leads.scalar(select(Notification).where(Notification.id == rows[0][0]))
    assert (row.status, row.attempts, row.kind) == ("sent", 1, "warm_up")


def test_second_warm_up_within_the_window_is_suppressed_but_a_reply_always_notifies(leads):
    assert warm(leads, "olga@example.com")
    leads.advance(days=2)
    assert warm(leads, "olga@example.com", "rose 12 points today") == []
    assert len(warm(leads, "olga@example.com", "replied", replied=True)) == 1
    leads.advance(days=leads.settings.warm_notice_days, seconds=-1)
    assert warm(leads, "olga@example.com", "crossed 50%") == [], "the reply's notice starts the window again"
    leads.advance(seconds=1)
    assert warm(leads, "olga@example.com", "crossed 50%"), "the window is over: notify again"
    assert leads.count(Notification, Notification.kind == "warm_up") == 3


def test_rolled_back_transaction_enqueues_nothing(leads):
    with leads.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == "olga@example.com")).one()
        notify_warm_lead(s, leads.settings, lead, "warm", leads.now)
        s.rollback()
    assert leads.count(Notification) == 0
    assert leads.queue.count == 0


def test_lead_without_owner_is_assigned_and_the_assignment_recorded(leads):
    leads.import_csv("email,first_name\nnew@example.com,Новый\n")
    rows = warm(leads, "new@example.com")
    lead = leads.lead("new@example.com")
    assert lead.owner_id is not None and rows[0][2] == lead.owner_id
    assert [(a.lead_id, a.user_id, a.reason) for a in leads.all(select(Assignment))] == [(lead.id, lead.owner_id, "round_robin")]


def test_failed_rep_email_is_listed_and_delivered_again_by_retry(leads):
    leads.smtp.replies[ANNA] = "550 5.1.1 No such user here"
    (notification_id, channel, _), = warm(leads, "olga@example.com")
    leads.work()
    listed = json.loads(leads.cli("notifications", "list", "--status", "failed", "--json", check=True).stdout)
    assert [(n["id"], n["channel"], n["status"], n["to"], n["lead"], n["attempts"]) for n in listed] == \
        [(notification_id, "email", "failed", ANNA, "olga@example.com", 1)]
    assert "550 5.1.1 No such user here" in listed[0]["error"], "a 5xx is not retried: it would answer the same"

    del leads.smtp.replies[ANNA]
    proc = leads.cli("notifications", "retry", check=True)
    assert proc.stdout.strip() == "enqueued 1 delivery job(s)"
    leads.work()
    row = leads.scalar(select(Notification).where(Notification.id == notification_id))
    assert (row.status, row.attempts) == ("sent", 2) and "attempt 1: 550" in row.error
    assert [m["Subject"] for m in leads.smtp.parsed()] == ['Warm lead: Ольга Иванова (ООО "Ромашка"), 34%']


def test_a_lost_job_is_enqueued_again_by_the_scheduler(leads):
    from nurture.periodic import Periodic

    warm(leads, "olga@example.com")
    leads.queue.empty()  # Redis lost the job (a flush, a crash before enqueueing)
    assert leads.queue.count == 0
    with leads.session() as s:
        assert Periodic(leads.settings, leads.redis).review_and_return(s, leads.now) == []
    assert leads.queue.count == 0, "younger than a minute: its job may still be on the way"
    leads.advance(minutes=2)
    with leads.session() as s:
        Periodic(leads.settings, leads.redis).review_and_return(s, leads.now)
    leads.work()
    assert leads.scalar(select(Notification.status)) == "sent" and len(leads.smtp.messages) == 1


def test_without_reps_or_webhooks_nobody_is_told_and_nothing_is_recorded(nurture):
    nurture.import_csv("email,first_name\nlonely@example.com,Одинокий\n")
    assert warm(nurture, "lonely@example.com") == []
    assert nurture.count(Notification) == 0 and nurture.lead("lonely@example.com").owner_id is None
