"""The scheduler through the whole calendar, driven by a fixed clock that jumps from due moment
to due moment, with the real RQ worker and SMTP server doing the sending."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import select

from nurture.models import Enrollment, Lead, Message, Sequence, Step

from conftest import START, drive, write_campaigns

SHIPPED_WINDOWS = {"first-contact": (0, 0), "follow-up": (2, 3), "case-study": (14, 14), "product-news": (30, 30),
                   "re-offer": (90, 180)}


def allowed_dates(origin: date, day_min: int, day_max: int) -> set[date]:
    """The local dates a step may go out on: business days in its window, else the first one after."""
    inside = {origin + timedelta(days=d) for d in range(day_min, day_max + 1)}
    business = {d for d in inside if d.weekday() < 5}
    if business:
        return business
    day = origin + timedelta(days=day_max + 1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return {day}


def test_the_systematic_calendar_sends_five_touches_in_business_hours_then_completes(leads):
    n = leads
    assert n.enroll().enrolled == 4
    drive(n)
    steps = {s.id: s for s in n.all(select(Step))}
    leads_by_id = {lead.id: lead for lead in n.all(select(Lead))}
    assert len(n.smtp.messages) == 20
    per_lead = defaultdict(list)
    for message in n.messages():
        per_lead[message.lead_id].append(message)
    assert len(per_lead) == 4
    for lead_id, messages in per_lead.items():
        lead = leads_by_id[lead_id]
        tz = ZoneInfo(lead.timezone)
        (enrollment,) = n.enrollments(Enrollment.lead_id == lead_id)
        assert enrollment.status == "completed" and enrollment.next_run_at is None and enrollment.next_step_id is None
        assert enrollment.finished_at is not None
        assert [steps[m.step_id].key for m in messages] == list(SHIPPED_WINDOWS)
        assert {m.status for m in messages} == {"sent"}
        origin = enrollment.started_at.astimezone(tz).date()
        previous = None
        for message in messages:
            local = message.sent_at.astimezone(tz)
            assert local.weekday() < 5, (lead.email, local)
            assert time(9) <= local.time() < time(18), (lead.email, local)
            day_min, day_max = SHIPPED_WINDOWS[steps[message.step_id].key]
            assert local.date() in allowed_dates(origin, day_min, day_max), (lead.email, steps[message.step_id].key, local)
            if previous is not None:
                assert message.sent_at - previous >= timedelta(hours=20)
            previous = message.sent_at
    received_ids = [raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode() for _, _, raw in n.smtp.messages]
    assert sorted(received_ids) == sorted(m.message_id for m in n.messages())


def test_los_angeles_lead_enrolled_on_its_sunday_evening_gets_monday_business_hours(leads):
    n = leads
    n.enroll()
    john = n.lead("john@example.net")
    (enrollment,) = n.enrollments(Enrollment.lead_id == john.id)
    local = enrollment.next_run_at.astimezone(ZoneInfo("America/Los_Angeles"))
    # START is 23:00 on Sunday 1 March in Los Angeles: day 0 has no business time left.
    assert START.astimezone(ZoneInfo("America/Los_Angeles")).strftime("%a %H:%M") == "Sun 23:00"
    assert local.date() == date(2026, 3, 2) and time(9) <= local.time() < time(18)


def test_step_claimed_late_waits_for_the_leads_next_business_moment(team):
    n = team
    n.load_campaigns()
    n.import_csv("email,timezone\nlate@example.com,Europe/London\n")
    n.enroll()
    (enrollment,) = n.enrollments()
    # The scheduler was down from before the due moment until Saturday.
    saturday = datetime(2026, 3, 7, 12, 0, tzinfo=ZoneInfo("Europe/London"))
    n.at(saturday)
    report = n.tick()
    assert (report.messages, report.deferred) == (0, 1)
    (enrollment,) = n.enrollments()
    local = enrollment.next_run_at.astimezone(ZoneInfo("Europe/London"))
    assert local.date() == date(2026, 3, 9) and time(9) <= local.time() < time(18)
    n.work()
    assert n.smtp.messages == []
    n.at(enrollment.next_run_at)
    n.tick_and_work()
    (message,) = n.messages()
    assert message.status == "sent" and len(n.smtp.messages) == 1


def test_a_tick_before_the_due_moment_claims_nothing(leads):
    n = leads
    n.enroll()
    first_due = min(e.next_run_at for e in n.enrollments())
    n.at(first_due - timedelta(seconds=1))
    report = n.tick()
    assert report.messages == 0 and n.count(Message) == 0
    n.at(first_due)
    assert n.tick().messages == 1


THROTTLED = """\
key: throttled
name: Throttled
timezone: Europe/Moscow
throttle_per_hour: 2
steps:
  - key: hello
    kind: first_contact
    day: 0
    template: first_contact
"""


def test_throttle_limits_messages_per_hour_and_the_rest_follow(team):
    n = team
    n.load_campaigns(write_campaigns(n.tmp_path / "campaigns", THROTTLED))
    n.import_csv("email,timezone\n" + "".join(f"t{i}@example.com,Europe/Moscow\n" for i in range(5)))
    n.enroll("throttled")
    n.at(START + timedelta(hours=7, minutes=59))  # 17:59 in Moscow: everyone is due
    assert n.tick().messages == 2
    n.work()
    assert n.tick().messages == 0
    sequence = n.scalar(select(Sequence).where(Sequence.key == "throttled"))
    assert sequence.throttle_per_hour == 2
    n.advance(hours=1, seconds=1)
    assert n.tick().messages == 0  # 19:00 in Moscow: outside the window, deferred to Tuesday
    drive(n)
    assert len(n.smtp.messages) == 5
    assert {e.status for e in n.enrollments()} == {"completed"}
