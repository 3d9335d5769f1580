"""The weekly review on nurture's clock: stale leads cool down, stuck leads are flagged, digests go out once a week."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from sqlmodel import select

from nurture.models import Event, Lead, Notification, StageChange, User
from nurture.notifications import notify_warm_lead
from nurture.periodic import Periodic
from nurture.weekly_review import review_moment, run_weekly_review, stage_limits, stuck_leads, week_of

from conftest import ANNA, IVAN, START, drive, received_by

REVIEW_AT = START + timedelta(days=39)  # Friday 10 April 2026, 07:00 UTC: 39 days after the first contact


def first_contact_sent(n) -> None:
    """Every lead enrolled in the default sequence and its first message sent (stage: contacted)."""
    n.enroll()
    drive(n, until=START + timedelta(days=2))  # four time zones: the first contacts go out over two days
    assert {lead.stage for lead in n.all(select(Lead))} == {"contacted"}


def add_manager(n) -> None:
    with n.session() as s:
        s.add(User(email="boss@example.com", name="Мария Руководитель", role="manager", created_at=n.now))
        s.commit()


def olga_replies_and_warms_up(n) -> None:
    """A reply recorded on the timeline (without the stage rule: olga stays in contacted) and a warm-up notice."""
    with n.session() as s:
        olga = s.exec(select(Lead).where(Lead.email == "olga@example.com")).one()
        s.add(Event(lead_id=olga.id, kind="reply", occurred_at=n.now, data={"text": "Давайте созвонимся"}))
        olga.probability = 0.41
        notify_warm_lead(s, n.settings, olga, "replied", n.now, replied=True)
        s.commit()


def review(n, **kwargs):
    with n.session() as s:
        return run_weekly_review(s, n.settings, n.now, **kwargs)


def test_stale_leads_cool_with_a_return_date_and_each_rep_gets_one_digest_per_week(leads):
    n = leads
    add_manager(n)
    first_contact_sent(n)
    n.at(REVIEW_AT - timedelta(days=3))
    olga_replies_and_warms_up(n)
    n.work()
    n.smtp.messages.clear()
    n.at(REVIEW_AT)

    report = review(n)
    assert report.week == "2026-W15"
    cooled = {c["email"] for c in report.cooled if c["moved"]}
    assert cooled == {"petr@example.org", "john@example.net", "emma@example.co.uk"}, "olga replied 3 days ago"
    for email in cooled:
        lead = n.lead(email)
        assert lead.stage == "cold"
        assert lead.probability_at == REVIEW_AT and lead.probability_why[0]["stage"] == "cold"  # rescored as it cooled
        assert REVIEW_AT + timedelta(days=85) <= lead.returns_at <= REVIEW_AT + timedelta(days=185), "3..6 months"
    assert [(s.email, s.stage, s.limit_from) for s in report.stuck] == [("olga@example.com", "contacted", "NURTURE_STUCK_DAYS")]
    n.work()
    mail = received_by(n)
    assert sorted(mail) == ["anna.sales@example.com", "boss@example.com", "ivan.sales@example.com"]
    (anna_digest,) = mail[ANNA]
    assert anna_digest["Subject"] == "Your week 2026-W15: 1 warm, 1 stuck"
    text = anna_digest.get_body(("plain",)).get_content()
    assert "41% Ольга Иванова (ООО \"Ромашка\")" in text.replace("  ", " ")
    assert re.search(r"Ольга Иванова \(ООО \"Ромашка\"\): 3[89](\.\d)? days in contacted \(usual limit 30.0\)", text), text
    assert "Emma Brown (Brown & Sons)" in text.split("Cooled down this week (1):")[1]
    assert "Ольга Иванова" in text.split("Replies this week (1):")[1]
    ivan_text = mail[IVAN][0].get_body(("plain",)).get_content()
    assert "Cooled down this week (2):" in ivan_text and "Пётр Сидоров" in ivan_text
    boss = mail["boss@example.com"][0]
    assert boss["Subject"] == "Pipeline review 2026-W15"
    assert "Cooled down by the review: 3." in boss.get_body(("plain",)).get_content()

    n.advance(hours=5)  # the same week: a second run (a restarted scheduler, an operator) sends nothing again
    again = review(n)
    assert [d["status"] for d in again.digests] == ["already sent"] * 3
    assert again.cooled == [] and again.flagged == 0
    n.work()
    assert sum(len(v) for v in received_by(n).values()) == 3
    assert n.count(Notification, Notification.kind == "stuck") == 1

    n.advance(days=7)  # next week: new digests
    assert [d["status"] for d in review(n).digests] == ["sent"] * 3


def test_dry_run_reports_and_changes_nothing(leads):
    n = leads
    first_contact_sent(n)
    n.at(REVIEW_AT)
    report = review(n, dry_run=True)
    assert len([c for c in report.cooled if c["moved"]]) == 4 and len(report.digests) == 2
    assert {lead.stage for lead in n.all(select(Lead))} == {"contacted"}
    assert n.count(Notification) == 0 and n.count(StageChange, StageChange.to_stage == "cold") == 0
    assert n.queue.count == 0


def test_stuck_limit_is_the_stages_p90_once_it_has_enough_history(leads):
    n = leads
    n.at(START + timedelta(days=60))
    with n.session() as s:  # ten past stays in engaged: 1..10 days
        for days in range(1, 11):
            lead = Lead(email=f"history{days}@example.com", stage="qualified", stage_changed_at=n.now - timedelta(days=1),
                        created_at=START, updated_at=START)
            s.add(lead)
            s.flush()
            entered = START + timedelta(days=1)
            s.add(StageChange(lead_id=lead.id, from_stage="contacted", to_stage="engaged", changed_at=entered))
            s.add(StageChange(lead_id=lead.id, from_stage="engaged", to_stage="qualified", changed_at=entered + timedelta(days=days)))
        for email, days in (("olga@example.com", 12), ("emma@example.co.uk", 5)):
            lead = s.exec(select(Lead).where(Lead.email == email)).one()
            lead.stage, lead.stage_changed_at = "engaged", n.now - timedelta(days=days)
        s.commit()
        limits = stage_limits(s, n.settings)
        stuck = stuck_leads(s, n.settings, n.now)
    limit, source = limits["engaged"]
    assert 9.0 < limit < 10.0 and source == "p90 of 10 stays"
    assert limits["qualified"] == (30.0, "NURTURE_STUCK_DAYS")
    assert "engaged" in limits and "won" not in limits and "cold" not in limits
    found = {s.email: s for s in stuck}
    assert found["olga@example.com"].stage == "engaged" and found["olga@example.com"].days == 12.0
    assert "emma@example.co.uk" not in found, "5 days is within the p90"


def test_the_scheduler_reviews_once_after_the_weekly_moment(leads):
    n = leads
    first_contact_sent(n)
    moment = review_moment(n.settings, START + timedelta(days=38))
    assert (moment.weekday(), moment.hour) == (4, 16), "Friday 16:00 (UTC is the default zone)"
    periodic = Periodic(n.settings, n.redis)
    with n.session() as s:
        assert not [line for line in periodic.review_and_return(s, moment - timedelta(minutes=1)) if "review" in line]
        assert n.count(Notification, Notification.kind == "digest") == 0
        lines = periodic.review_and_return(s, moment)
        assert any(line.startswith(f"weekly review {week_of(moment)[0]}: cooled 4") for line in lines), lines
        assert periodic.review_and_return(s, moment + timedelta(hours=2)) == []
    assert n.count(Notification, Notification.kind == "digest") == 2


def test_review_cli_json_and_dry_run(leads):
    n = leads
    first_contact_sent(n)
    at = (REVIEW_AT).isoformat()
    proc = n.cli("review", "weekly", "--now", at, "--dry-run", "--json", check=True)
    report = json.loads(proc.stdout)
    assert report["week"] == "2026-W15" and report["dry_run"] is True and len(report["cooled"]) == 4
    assert n.count(StageChange, StageChange.to_stage == "cold") == 0
    proc = n.cli("review", "weekly", "--now", at, check=True)
    assert "cooled: 4 moved to cold" in proc.stdout and f"digest to {ANNA} (rep): sent" in proc.stdout
    proc = n.cli("review", "weekly", "--now", "last friday")
    assert proc.returncode == 1 and proc.stderr.startswith("error: --now: 'last friday' is not an ISO-8601 time")
