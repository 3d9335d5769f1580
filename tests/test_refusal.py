"""Follow-up after a refusal: a lead marked lost with a reason gets three letters on a plan that
speak to the reason, in its language; a reply brings it back and tells its rep; silence archives
it or hands it to the re-offer; and the won-back flow is counted per reason."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from types import SimpleNamespace
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

import mail_samples as samples
from nurture.errors import SequenceFileError
from nurture.inbound import process_raw
from nurture.models import Enrollment, Lead, Message, Note, Notification, Sequence, StageChange, Step
from nurture.periodic import Periodic
from nurture.pipeline import load_pipeline
from nurture.refusal_context import refusal_variables
from nurture.rendering import Renderer, compile_template, sample_context
from nurture.send_window import SendWindow, inside
from nurture.stages import move_stage

from conftest import ANNA, CAMPAIGNS_DIR, START, TEMPLATES_DIR, drive, iso, received_by, send_due, write_campaigns

REFUSAL = "follow-up-after-refusal"
MOSCOW = ZoneInfo("Europe/Moscow")
WEEKDAYS = SendWindow.parse("mon,tue,wed,thu,fri", "09:00", "18:00")


def lose(n, email: str, reason: str, source: str = "manual") -> None:
    with n.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == email)).one()
        move_stage(s, lead, "lost", source=source, now=n.now, lost_reason=reason)
        s.commit()


def refusal_enrollment(n, email: str) -> Enrollment:
    sequence_id = n.scalar(select(Sequence.id).where(Sequence.key == REFUSAL))
    (enrollment,) = n.enrollments(Enrollment.lead_id == n.lead(email).id, Enrollment.sequence_id == sequence_id)
    return enrollment


def letters(n, email: str) -> list:
    return received_by(n).get(email, [])


def text_of(message) -> str:
    return message.get_body(("plain",)).get_content()


def test_the_shipped_sequence_loads_with_its_anchor_reasons_and_trigger(cast):
    sequence = cast.scalar(select(Sequence).where(Sequence.key == REFUSAL))
    assert sequence.trigger == "lost"
    steps = cast.all(select(Step).where(Step.sequence_id == sequence.id).order_by(Step.position))
    assert [(s.key, s.anchor, s.day_min, s.day_max) for s in steps] == [
        ("two-weeks-note", "enrollment", 13, 15), ("month-update", "enrollment", 29, 32),
        ("before-next-quarter", "quarter_start", 0, 0)]
    assert steps[1].template == "refusal-default"  # the default, for reasons without their own
    assert steps[1].templates_by_reason["competitor"] == "refusal-competitor"
    assert steps[2].anchor_business_days == 5


def test_marking_lost_stops_other_sequences_and_enrolls_with_the_reason_and_last_conversation(leads):
    n = leads
    n.enroll("systematic-follow-up", emails=["olga@example.com"])
    send_due(n)  # the first contact: the last thing said to her
    (first,) = n.messages(Message.status == "sent")
    n.advance(days=1)
    lose(n, "olga@example.com", "price")
    systematic = n.enrollments(Enrollment.sequence_id == first.sequence_id)
    assert [(e.status, e.exit_reason) for e in systematic] == [("exited", "lost (price)")]
    enrollment = refusal_enrollment(n, "olga@example.com")
    assert enrollment.status == "active"
    assert enrollment.context == {
        "lost_reason": "price", "lost_reason_label": {"en": "Price", "ru": "Цена"},
        "last_conversation_at": first.sent_at.isoformat(), "stage_before": "contacted", "lost_at": n.now.isoformat()}
    # The first letter is planned 13..15 days on, in her business hours.
    local = enrollment.next_run_at.astimezone(MOSCOW)
    assert date(2026, 3, 16) <= local.date() <= date(2026, 3, 18) and inside(WEEKDAYS, MOSCOW, enrollment.next_run_at)


def test_a_rep_reopening_the_deal_ends_the_follow_up(leads):
    n = leads
    lose(n, "olga@example.com", "timing")
    n.advance(days=3)
    proc = n.cli("leads", "stage", "olga@example.com", "proposal", check=True)
    assert "olga@example.com: lost -> proposal" in proc.stdout
    enrollment = refusal_enrollment(n, "olga@example.com")
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "moved to proposal")
    drive(n, until=START + timedelta(days=120))
    assert letters(n, "olga@example.com") == []


def test_a_lost_reason_is_required_and_must_be_known(leads):
    with leads.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == "john@example.net")).one()
        with pytest.raises(ValueError, match="needs a lost reason"):
            move_stage(s, lead, "lost", source="manual", now=leads.now)
    proc = leads.cli("leads", "stage", "john@example.net", "lost", "--reason", "pricey")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: unknown lost reason 'pricey'; use one of price, timing")
    assert leads.lead("john@example.net").stage == "new"
    assert leads.count(Enrollment) == 0


def test_imported_history_and_suppressed_leads_are_not_followed_up(leads):
    n = leads
    lose(n, "john@example.net", "price", source="import")
    n.cli("suppress", "add", "emma@example.co.uk", check=True)
    lose(n, "emma@example.co.uk", "timing")
    assert n.count(Enrollment) == 0
    assert n.lead("john@example.net").stage == "lost" and n.lead("emma@example.co.uk").stage == "lost"


REASON_LEADS = """\
email,first_name,company,timezone,language,owner
price.ru@example.com,Ольга,Ромашка,Europe/Moscow,ru,anna.sales@example.com
budget.en@example.com,Mary,Acme,Europe/London,en,anna.sales@example.com
timing.en@example.com,John,Acme,Europe/London,en,anna.sales@example.com
competitor.ru@example.com,Пётр,Вектор,Europe/Moscow,ru,anna.sales@example.com
need.en@example.com,Emma,Brown,Europe/London,en,anna.sales@example.com
need.ru@example.com,Иван,Север,Europe/Moscow,ru,anna.sales@example.com
"""


def test_the_month_letter_is_chosen_by_reason_with_the_default_for_the_rest_in_both_languages(cast):
    n = cast
    n.import_csv(REASON_LEADS)
    for email, reason in (("price.ru@example.com", "price"), ("budget.en@example.com", "no_budget"),
                          ("timing.en@example.com", "timing"), ("competitor.ru@example.com", "competitor"),
                          ("need.en@example.com", "no_need"), ("need.ru@example.com", "no_need")):
        lose(n, email, reason)
    drive(n, until=START + timedelta(days=40))
    second = {email: letters(n, email)[1] for email in received_by(n)}
    assert len(second) == 6 and all(len(letters(n, e)) == 2 for e in second)
    assert second["price.ru@example.com"]["Subject"] == "Снова о цене: пакет поменьше для компании Ромашка"
    assert "нас остановила цена" in text_of(second["price.ru@example.com"])
    assert second["budget.en@example.com"]["Subject"] == "The price question, revisited: a smaller plan for Acme"
    assert "there was no budget for this" in text_of(second["budget.en@example.com"])
    assert second["timing.en@example.com"]["Subject"] == "When the timing is right: a start that takes one afternoon"
    assert second["competitor.ru@example.com"]["Subject"] == "В паре с выбранным решением: наши новые интеграции"
    assert second["need.en@example.com"]["Subject"] == "What has changed since we spoke on 2 March"
    assert "(the reason we noted: no need)" in text_of(second["need.en@example.com"])
    assert second["need.ru@example.com"]["Subject"] == "Что изменилось с нашего разговора 2 марта"
    assert "(причина, которую мы отметили: «Нет потребности»)" in text_of(second["need.ru@example.com"])
    # Nothing asks "so, have you decided?".
    for message in second.values():
        body = text_of(message).lower()
        assert "decided?" not in body and "решили?" not in body


def test_the_whole_plan_in_russian_driven_by_the_clock_through_the_worker_and_smtp(cast):
    """Marked lost by the CLI on Monday 2 March 2026; the last conversation was a note on 26 February."""
    n = cast
    n.import_csv(REASON_LEADS)
    olga = n.lead("price.ru@example.com")
    with n.session() as s:
        s.add(Note(lead_id=olga.id, body="Говорили о цене, дорого", created_at=datetime(2026, 2, 26, 12, tzinfo=timezone.utc)))
        s.commit()
    proc = n.cli("leads", "stage", "price.ru@example.com", "lost", "--reason", "price", "--now", iso(n.now), check=True)
    assert "price.ru@example.com: new -> lost (price)" in proc.stdout

    # About two weeks: a short note naming the reason and the day of the last conversation.
    drive(n, until=datetime(2026, 3, 25, tzinfo=timezone.utc))
    (note,) = letters(n, "price.ru@example.com")
    assert note["Subject"] == "Ольга, коротко после нашего разговора 26 февраля"
    assert "Вы решили пока не продолжать: не подошла цена" in text_of(note)
    # About a month: the price letter.
    drive(n, until=datetime(2026, 4, 15, tzinfo=timezone.utc))
    assert [m["Subject"] for m in letters(n, "price.ru@example.com")][1] == "Снова о цене: пакет поменьше для компании Ромашка"
    # Shortly before the next quarter (1 July): five business days before, Wednesday 24 June.
    drive(n)
    third = letters(n, "price.ru@example.com")[2]
    assert third["Subject"] == "Перед новым кварталом: вернёмся к вопросу о цене?"
    assert "Когда мы говорили 26 февраля, мы остановились на цене." in text_of(third)
    sent = n.messages(Message.lead_id == olga.id)
    days = [m.sent_at.astimezone(MOSCOW).date() for m in sent]
    assert date(2026, 3, 16) <= days[0] <= date(2026, 3, 17)  # days 13..15 after 2 March; the 15th is a Sunday
    assert date(2026, 3, 31) <= days[1] <= date(2026, 4, 3)
    assert days[2] == date(2026, 6, 24)
    assert all(inside(WEEKDAYS, MOSCOW, m.sent_at) for m in sent)
    assert refusal_enrollment(n, "price.ru@example.com").status == "completed"

    # Silence: two weeks after the last letter the lead is handed to the re-offer (the default).
    early = n.cli("refusal", "settle", "--now", iso(n.now + timedelta(days=13)), check=True)
    assert early.stdout.strip() == "settled: 0"
    proc = n.cli("refusal", "settle", "--now", iso(n.now + timedelta(days=15)), check=True)
    assert "price.ru@example.com: re-offer on " in proc.stdout and "settled: 1" in proc.stdout
    lead = n.lead("price.ru@example.com")
    assert lead.stage == "cold"
    # 3..6 months after it was lost (2 June .. 2 September), not before the hand-over itself.
    assert n.now + timedelta(days=15) <= lead.returns_at <= datetime(2026, 9, 3, tzinfo=timezone.utc)
    assert n.cli("refusal", "settle", "--now", iso(n.now + timedelta(days=20)), check=True).stdout.strip() == "settled: 0"


def test_the_scheduler_archives_a_silent_lead_when_set_so(cast):
    n = cast
    n.import_csv(REASON_LEADS)
    lose(n, "timing.en@example.com", "timing")
    drive(n)
    assert len(letters(n, "timing.en@example.com")) == 3
    n.advance(days=15)
    periodic = Periodic(replace(n.settings, refusal_after="archive"), n.redis)
    with n.session() as s:
        assert periodic.settle_refusals(s, n.now) == ["after refusal: 1 silent lead(s) settled"]
        assert periodic.settle_refusals(s, n.now + timedelta(minutes=59)) == []  # hourly
    lead = n.lead("timing.en@example.com")
    assert (lead.stage, lead.status) == ("archived", "archived")
    assert refusal_enrollment(n, "timing.en@example.com").exit_reason == "after refusal: archived"


def test_a_bad_refusal_setting_is_refused(cast):
    cast.monkeypatch.setenv("NURTURE_REFUSAL_AFTER", "forget")
    proc = cast.cli("refusal", "settle")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: NURTURE_REFUSAL_AFTER: 'forget' must be archive or re_offer"


def test_a_reply_in_the_middle_stops_the_rest_brings_the_lead_back_and_tells_its_rep(cast):
    n = cast
    n.import_csv(REASON_LEADS)
    lose(n, "competitor.ru@example.com", "competitor")
    drive(n, until=datetime(2026, 3, 25, tzinfo=timezone.utc))
    (note,) = letters(n, "competitor.ru@example.com")
    assert "и выбрали другое решение" in text_of(note)
    assert "Справляется ли новое решение" in text_of(note)
    n.advance(days=2)
    raw = samples.reply("competitor.ru@example.com", "sales@nurture.example.com", "Давайте созвонимся на следующей неделе.",
                        in_reply_to=note["Message-ID"], subject="Re: " + str(note["Subject"]))
    with n.session() as s:
        result = process_raw(s, n.settings, raw, "cli", n.now)
    assert result.kind == "reply"
    assert any("replied after a refusal (competitor): back to engaged" in a for a in result.actions), result.actions
    lead = n.lead("competitor.ru@example.com")
    assert lead.stage == "engaged"
    change = n.scalar(select(StageChange).where(StageChange.lead_id == lead.id).order_by(StageChange.id.desc()))
    assert (change.from_stage, change.to_stage, change.reason) == ("lost", "engaged", "rule")
    enrollment = refusal_enrollment(n, "competitor.ru@example.com")
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "replied")
    notices = n.all(select(Notification).where(Notification.lead_id == lead.id, Notification.kind == "warm_up"))
    assert [(x.channel, x.payload["replied"]) for x in notices] == [("email", True)]
    n.work()  # the delivery job, on the real worker, to the real SMTP server
    to_rep = letters(n, ANNA)
    assert len(to_rep) == 1 and to_rep[0]["Subject"].startswith("Reply from Пётр (Вектор)")
    # The rest of the plan is off: nothing more reaches the lead, through the next quarter.
    drive(n, until=datetime(2026, 7, 15, tzinfo=timezone.utc))
    assert len(letters(n, "competitor.ru@example.com")) == 1


def test_won_back_after_refusal_is_counted_per_reason(cast):
    n = cast
    n.import_csv(REASON_LEADS)
    for email, reason in (("price.ru@example.com", "price"), ("budget.en@example.com", "price"),
                          ("competitor.ru@example.com", "competitor")):
        lose(n, email, reason)
    drive(n, until=datetime(2026, 3, 25, tzinfo=timezone.utc))
    note = letters(n, "price.ru@example.com")[0]
    raw = samples.reply("price.ru@example.com", "sales@nurture.example.com", "Пришлите новые условия.",
                        in_reply_to=note["Message-ID"])
    with n.session() as s:
        process_raw(s, n.settings, raw, "cli", n.now)
    n.advance(days=20)
    n.cli("leads", "stage", "price.ru@example.com", "won", "--value", "5000", check=True)
    flows = {f["reason"]: f for f in json.loads(n.cli("refusal", "stats", "--json", check=True).stdout)}
    assert flows["price"] == {"reason": "price", "label": {"en": "Price", "ru": "Цена"}, "lost": 2, "returned": 1,
                              "won": 1, "won_value": 5000.0, "won_rate": 0.5}
    assert (flows["competitor"]["lost"], flows["competitor"]["returned"], flows["competitor"]["won"]) == (1, 0, 0)
    assert flows["no_need"]["lost"] == 0
    later = json.loads(n.cli("refusal", "stats", "--json", "--since", "2026-03-03", check=True).stdout)
    assert sum(f["lost"] for f in later) == 0
    table = n.cli("refusal", "stats", check=True).stdout
    assert "Won back after refusal" in table and "5,000" in table


@pytest.mark.parametrize("language, tz, expected", [
    ("ru", "Europe/Moscow", "12 марта"), ("en", "Europe/Moscow", "12 March"), ("en", "America/Los_Angeles", "11 March")])
def test_the_last_conversation_is_spelt_in_the_leads_language_and_zone(language, tz, expected):
    context = {"lost_reason": "no_need", "lost_reason_label": {"en": "No need", "ru": "Нет потребности"},
               "last_conversation_at": "2026-03-11T22:30:00+00:00", "stage_before": "proposal"}
    variables = refusal_variables(context, language, ZoneInfo(tz))
    assert variables["last_conversation"] == expected
    assert variables["reason_label"] == ("Нет потребности" if language == "ru" else "No need")
    assert refusal_variables(None, language, ZoneInfo(tz)) == {
        "reason": "", "reason_label": "", "last_conversation": "", "stage_before": ""}


def refusal_campaigns(n, steps: str):
    folder = n.tmp_path / "campaigns"
    write_campaigns(folder, "key: refusal-test\nname: Refusal test\ntrigger: lost\nsteps:\n" + steps)
    shutil.copy(CAMPAIGNS_DIR / "pipeline.yaml", folder / "pipeline.yaml")
    return folder


@pytest.mark.parametrize("steps, expected", [
    ("  - key: month\n    kind: case_study\n    day: 30\n    templates_by_reason: {prices: news, default: news}\n",
     "step month: field 'templates_by_reason.prices': unknown lost reason 'prices' "
     "(known: price, timing, no_budget, competitor, no_need, no_answer) (did you mean 'price'?)"),
    ("  - key: month\n    kind: case_study\n    day: 30\n    templates_by_reason: {price: news}\n",
     "step 1 (month): field 'templates_by_reason': add a 'default' template, used for every reason without its own"),
    ("  - key: month\n    kind: case_study\n    day: 30\n    template: news\n    templates_by_reason: {default: news}\n",
     "step 1 (month): give template or templates_by_reason (with its default), not both"),
    ("  - key: month\n    kind: case_study\n    day: 30\n    templates_by_reason: {price: nwes, default: news}\n",
     "step month: template 'nwes' has no en version"),
    ("  - key: month\n    kind: case_study\n    anchor: {kind: quarter_start, business_days_before: -1}\n    template: news\n",
     "step 1 (month): field 'anchor.business_days_before': Input should be greater than or equal to 0"),
])
def test_bad_refusal_sequences_name_file_step_and_field(nurture, steps, expected):
    folder = refusal_campaigns(nurture, steps)
    with pytest.raises(SequenceFileError) as info:
        nurture.load_campaigns(folder)
    assert f"{folder / 'refusal-test.yaml'}: {expected}" in str(info.value)
    assert nurture.count(Sequence) == 0


@pytest.mark.parametrize("path", sorted(TEMPLATES_DIR.glob("refusal-*.mjml")), ids=lambda p: p.name)
def test_every_refusal_letter_names_the_day_for_every_lost_reason_and_never_asks_if_they_decided(path):
    compiled = compile_template(path)
    template = SimpleNamespace(checksum=compiled.checksum, html=compiled.html, text=compiled.text)
    language = compiled.language
    day = "12 марта" if language == "ru" else "12 March"
    renderer = Renderer()
    for reason in load_pipeline(CAMPAIGNS_DIR / "pipeline.yaml").lost_reasons:
        context = {**sample_context(), "refusal": {"reason": reason.key, "reason_label": getattr(reason.label, language),
                                                   "last_conversation": day, "stage_before": "proposal"}}
        rendered = renderer.render(template, compiled.subjects[0], context)
        assert f" {day}, " in rendered.text, (reason.key, rendered.text)  # "When we spoke on 12 March, ..."
        assert "decided?" not in rendered.text and "решили?" not in rendered.text
        assert "{{" not in rendered.text and "{%" not in rendered.text
