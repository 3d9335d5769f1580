"""Cooled leads come back on their return date with the re-offer, through the scheduler and a real worker."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import select

from nurture.cold_return import return_cooled_leads
from nurture.models import Enrollment, Lead, Message, Sequence, Suppression
from nurture.periodic import Periodic

from conftest import drive, received_by
from test_weekly_review import REVIEW_AT, first_contact_sent, review

SUBJECTS = {
    "olga@example.com": {"Ольга, давно не писали: что изменилось за эти месяцы",
                         'Свежий взгляд для компании ООО "Ромашка"? Новые условия этого квартала'},
    "petr@example.org": {"Пётр, давно не писали: что изменилось за эти месяцы",
                         "Свежий взгляд для компании Вектор? Новые условия этого квартала"},
    "emma@example.co.uk": {"Emma, it's been a while: three things that changed",
                           "A fresh look for Brown & Sons? New terms this quarter"},
}


def cooled(n, *, whole_calendar: bool = False) -> dict[str, Lead]:
    """The four leads contacted, silent, and cooled by the weekly review.

    ``whole_calendar``: the default sequence runs to its end (its own re-offer in
    months 3-6 included) before the review; otherwise it is stopped after the
    first contact, so the leads are free to return.
    """
    if whole_calendar:
        n.enroll()
        drive(n)
        n.at(max(m.sent_at for m in n.messages(Message.status == "sent")) + timedelta(days=31))
    else:
        first_contact_sent(n)
        n.at(REVIEW_AT)
    review(n)
    n.work()
    n.smtp.messages.clear()
    if not whole_calendar:
        finish_default_sequence(n)
    leads = {lead.email: lead for lead in n.all(select(Lead))}
    assert {lead.stage for lead in leads.values()} == {"cold"} and all(lead.returns_at for lead in leads.values())
    return leads


def finish_default_sequence(n) -> None:
    with n.session() as s:
        s.execute(sa.update(Enrollment).values(status="completed", next_run_at=None, finished_at=n.now))
        s.commit()


def returns(n):
    with n.session() as s:
        return return_cooled_leads(s, n.settings, n.now)


def test_cold_leads_return_on_their_date_and_receive_the_re_offer(leads):
    n = leads
    before = cooled(n, whole_calendar=True)
    assert n.count(Enrollment, Enrollment.status == "completed") == 4, "the default sequence ran to its end"
    with n.session() as s:
        s.add(Suppression(email="john@example.net", reason="unsubscribed", created_at=n.now))
        s.commit()
    re_offer = n.scalar(select(Sequence).where(Sequence.key == "re-offer-cold-leads"))
    assert re_offer.trigger == "cold_return"

    n.at(min(lead.returns_at for lead in before.values()) - timedelta(seconds=1))
    assert returns(n).due == 0, "nobody before their date"

    last = max(lead.returns_at for lead in before.values())
    n.at(last)
    with n.session() as s:
        lines = Periodic(n.settings, n.redis).review_and_return(s, n.now)
    assert "cold leads back: 3 enrolled in the re-offer" in lines
    enrolled = {e.lead_id for e in n.enrollments(Enrollment.sequence_id == re_offer.id, Enrollment.status == "active")}
    assert enrolled == {before[email].id for email in SUBJECTS}
    assert all(lead.returns_at is None for lead in n.all(select(Lead))), "handled once per return date"
    assert n.lead("john@example.net").stage == "cold", "the suppressed lead stays cold and is not enrolled"

    drive(n, until=n.now + timedelta(days=4))  # the next business moment in each lead's zone
    mail = received_by(n)
    assert sorted(mail) == sorted(SUBJECTS)
    for email, subjects in SUBJECTS.items():
        (message,) = mail[email]
        assert message["Subject"] in subjects
        button = "See this quarter's terms" if email.endswith(".uk") else "Условия этого квартала"
        assert button in message.get_body(("html",)).get_content()

    again = returns(n)
    assert again.due == 0 and n.count(Enrollment, Enrollment.sequence_id == re_offer.id) == 3


def test_a_lead_still_in_another_sequence_waits_for_it_to_end(leads):
    n = leads
    first_contact_sent(n)
    n.at(REVIEW_AT)
    review(n)
    latest = max(lead.returns_at for lead in n.all(select(Lead)))
    n.at(latest)
    report = returns(n)
    assert (report.due, report.enrolled, report.waiting) == (0, 0, 4), "still in the default sequence"
    assert all(lead.returns_at for lead in n.all(select(Lead)))
    finish_default_sequence(n)
    report = returns(n)
    assert (report.due, report.enrolled, report.waiting) == (4, 4, 0)


def test_refusals_are_reported_and_the_date_cleared(leads):
    n = leads
    before = cooled(n)
    with n.session() as s:
        s.add(Suppression(email="john@example.net", reason="bounce_hard", created_at=n.now))
        s.commit()
    n.at(max(lead.returns_at for lead in before.values()))
    report = returns(n)
    assert (report.due, report.enrolled) == (4, 3)
    assert dict(report.refused) == {"suppressed (bounce_hard)": ["john@example.net"]}
    assert n.lead("john@example.net").returns_at is None


def test_without_a_re_offer_sequence_leads_wait_for_one(leads):
    n = leads
    before = cooled(n)
    with n.session() as s:
        sequence = s.exec(select(Sequence).where(Sequence.trigger == "cold_return")).one()
        sequence.status = "paused"
        s.commit()
    n.at(max(lead.returns_at for lead in before.values()))
    report = returns(n)
    assert report.due == 4 and report.enrolled == 0 and "no active sequence with trigger: cold_return" in report.problem
    assert all(lead.returns_at for lead in n.all(select(Lead))), "they return once a sequence is there"
