"""Sequence files: the shipped ones load, mistakes are named precisely, edits keep progress,
and loading is all or nothing."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from sqlmodel import select

from nurture.errors import SequenceFileError
from nurture.loading import check_campaigns
from nurture.models import EmailTemplate, Message, Sequence, Step

from conftest import CAMPAIGNS_DIR, SHORT_SEQUENCE, START, TEMPLATES_DIR, drive, write_campaigns

SHIPPED = (CAMPAIGNS_DIR / "systematic-follow-up.yaml").read_text(encoding="utf-8")


def edited(**replacements: str) -> str:
    text = SHIPPED
    for old, new in replacements.values():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def load_error(n, document: str) -> tuple[str, str]:
    campaigns = write_campaigns(n.tmp_path / "bad-campaigns", document)
    with pytest.raises(SequenceFileError) as info:
        n.load_campaigns(campaigns)
    return str(info.value), str(campaigns / "systematic-follow-up.yaml")


def test_shipped_campaigns_and_templates_load(nurture):
    n = nurture
    report = n.load_campaigns()
    assert "systematic-follow-up" in report.sequences_added
    assert set(report.templates_added) >= {
        f"{name}.{lang}" for name in ("case_study", "first_contact", "follow_up", "news", "re_offer", "special_offer")
        for lang in ("en", "ru")}
    sequence = n.scalar(select(Sequence).where(Sequence.key == "systematic-follow-up"))
    assert (sequence.status, sequence.timezone, sequence.send_days, sequence.send_start, sequence.send_end) == (
        "active", "Europe/Moscow", "mon,tue,wed,thu,fri", "09:00", "18:00")
    steps = n.all(select(Step).where(Step.sequence_id == sequence.id).order_by(Step.position))
    assert [(s.key, s.kind, s.day_min, s.day_max, s.template) for s in steps] == [
        ("first-contact", "first_contact", 0, 0, "first_contact"),
        ("follow-up", "follow_up", 2, 3, "follow_up"),
        ("case-study", "case_study", 14, 14, "case_study"),
        ("product-news", "news", 30, 30, "news"),
        ("re-offer", "re_offer", 90, 180, "re_offer"),
    ]
    # Loading the same files again changes nothing.
    again = n.load_campaigns()
    assert (again.sequences_added, again.sequences_updated, again.templates_added, again.templates_updated) == ([], [], [], [])
    assert again.unchanged == len(report.sequences_added) + len(report.templates_added)


def test_misspelt_step_kind_names_file_step_and_field_with_a_suggestion(nurture):
    message, path = load_error(nurture, edited(kind=("kind: follow_up", "kind: folow_up")))
    assert message.startswith(f"{path}: step 2 (follow-up): field 'kind': 'folow_up' is not one of ")
    assert message.endswith("(did you mean 'follow_up'?)")
    assert nurture.count(Sequence) == 0


def test_unknown_step_field_is_named_with_a_suggestion(nurture):
    message, path = load_error(nurture, edited(field=("    template: case_study\n", "    templte: case_study\n")))
    assert message == f"{path}: step 3 (case-study): field 'templte': unknown field (did you mean 'template'?)"


def test_unknown_top_level_field_is_named(nurture):
    message, path = load_error(nurture, edited(field=("status: active", "status: active\nthrottle: 5")))
    assert message == f"{path}: field 'throttle': unknown field (did you mean 'throttle_per_hour'?)"


@pytest.mark.parametrize("day, reason", [
    ("[3, 2]", "the window must satisfy 0 <= min <= max <= 3650"),
    ("-1", "the window must satisfy 0 <= min <= max <= 3650"),
    ("[2, 3, 4]", "give one day (14) or a window [min, max] such as [2, 3]"),
    ("[90, 5000]", "the window must satisfy 0 <= min <= max <= 3650"),
])
def test_bad_day_window_is_refused_with_the_rule(nurture, day, reason):
    message, path = load_error(nurture, edited(day=("day: [2, 3]", f"day: {day}")))
    assert message == f"{path}: step 2 (follow-up): field 'day': {reason}"


def test_bad_send_window_and_time_zone_are_refused(nurture):
    message, path = load_error(nurture, edited(start=('start: "09:00"', 'start: "19:00"')))
    assert message == f"{path}: field 'send_window': send hours 19:00-18:00: the start must be before the end"
    message, path = load_error(nurture, edited(tz=("timezone: Europe/Moscow", "timezone: Europe/Moskva")))
    assert message == f"{path}: field 'timezone': unknown time zone 'Europe/Moskva'"


def test_step_with_a_template_that_does_not_exist_is_refused(nurture):
    message, _ = load_error(nurture, edited(template=("template: news", "template: newz")))
    assert "step product-news: template 'newz' has no en version" in message


def test_invalid_yaml_names_the_line(nurture):
    message, path = load_error(nurture, edited(yaml=("  - key: case-study\n", "  - key: case-study\n   bad: [\n")))
    assert message.startswith(f"{path} line ") and "not valid YAML" in message


def test_loading_is_all_or_nothing(nurture, tmp_path):
    n = nurture
    n.load_campaigns()
    shipped = n.all(select(Sequence.key).order_by(Sequence.key))
    before_steps = [(s.id, s.key, s.day_min, s.day_max, s.retired) for s in n.all(select(Step).order_by(Step.id))]
    before_templates = [(t.name, t.language, t.version, t.checksum) for t in n.all(select(EmailTemplate).order_by(EmailTemplate.id))]

    # One good edit, one new good sequence, and one bad file beside them.
    campaigns = write_campaigns(tmp_path / "campaigns", edited(day=("day: [2, 3]", "day: [3, 4]")), SHORT_SEQUENCE,
                                SHORT_SEQUENCE.replace("webinar-follow-up", "broken").replace("kind: news", "kind: newz"))
    with pytest.raises(SequenceFileError) as info:
        n.load_campaigns(campaigns)
    assert "broken.yaml: step 2 (recording): field 'kind'" in str(info.value)
    assert n.all(select(Sequence.key).order_by(Sequence.key)) == shipped
    assert [(s.id, s.key, s.day_min, s.day_max, s.retired) for s in n.all(select(Step).order_by(Step.id))] == before_steps

    # A broken template stops everything too, including an edit to a good template.
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    news = templates / "news.en.mjml"
    news.write_text(news.read_text(encoding="utf-8").replace("<mj-body", "<!-- edited -->\n<mj-body", 1), encoding="utf-8")
    case = templates / "case_study.ru.mjml"
    case.write_text(case.read_text(encoding="utf-8").replace("</mj-column>", "", 1), encoding="utf-8")
    with pytest.raises(SequenceFileError) as info:
        n.load_campaigns(CAMPAIGNS_DIR, templates)
    assert "case_study.ru.mjml line" in str(info.value)
    assert [(t.name, t.language, t.version, t.checksum) for t in n.all(select(EmailTemplate).order_by(EmailTemplate.id))] == before_templates


def test_check_reports_every_problem_at_once(tmp_path):
    campaigns = write_campaigns(tmp_path / "campaigns", edited(kind=("kind: follow_up", "kind: folow_up")),
                                SHORT_SEQUENCE.replace("day: [7, 8]", "day: [8, 7]"))
    with pytest.raises(SequenceFileError) as info:
        check_campaigns(campaigns, TEMPLATES_DIR, "en")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert any("systematic-follow-up.yaml: step 2 (follow-up): field 'kind'" in line for line in lines)
    assert any("webinar-follow-up.yaml: step 2 (recording): field 'day'" in line for line in lines)


def test_reloading_an_edited_sequence_keeps_enrolled_leads_progress(team):
    n = team
    campaigns = write_campaigns(n.tmp_path / "campaigns", SHIPPED)
    n.load_campaigns(campaigns)
    n.import_csv("email,first_name,timezone\n"
                 "a@example.com,A,Europe/Moscow\nb@example.com,B,Europe/London\nc@example.com,C,Asia/Vladivostok\n")
    assert n.enroll().enrolled == 3
    drive(n, until=START + timedelta(days=1, hours=16))  # every first contact is out
    old_steps = {s.key: s.id for s in n.all(select(Step))}
    assert [m.step_id for m in n.messages()] == [old_steps["first-contact"]] * 3
    assert {e.next_step_id for e in n.enrollments()} == {old_steps["follow-up"]}

    # The marketer removes the follow-up, moves the case study and adds a special offer.
    new_version = edited(
        remove=("""  - key: follow-up
    kind: follow_up
    day: [2, 3]
    template: follow_up
    goal: get a reply
""", ""),
        move=("day: 14", "day: [15, 16]"),
        add=("  - key: re-offer\n", """  - key: special-offer
    kind: special_offer
    day: 60
    template: special_offer
    goal: an offer
  - key: re-offer
"""),
    )
    write_campaigns(campaigns, new_version)
    report = n.load_campaigns(campaigns)
    assert report.sequences_updated == ["systematic-follow-up (v2)"]
    assert report.steps_retired == ["systematic-follow-up/follow-up"]
    steps = {s.key: s for s in n.all(select(Step))}
    for key in ("first-contact", "case-study", "product-news", "re-offer"):
        assert steps[key].id == old_steps[key]  # mapped by key, updated in place
    assert steps["follow-up"].retired and steps["follow-up"].id == old_steps["follow-up"]
    assert (steps["case-study"].day_min, steps["case-study"].day_max) == (15, 16)
    assert not steps["special-offer"].retired

    drive(n)
    expected = ["first-contact", "case-study", "product-news", "special-offer", "re-offer"]
    by_id = {s.id: s for s in steps.values()}
    for enrollment in n.enrollments():
        messages = n.messages(Message.enrollment_id == enrollment.id)
        assert [by_id[m.step_id].key for m in messages] == expected
        assert {m.status for m in messages} == {"sent"}
        started = enrollment.started_at
        case_study = next(m for m in messages if by_id[m.step_id].key == "case-study")
        assert timedelta(days=14) < case_study.sent_at - started < timedelta(days=18)
        assert enrollment.status == "completed"
    assert len(n.smtp.messages) == 15
    # History still points at the steps it was sent for.
    assert n.count(Message, Message.step_id == old_steps["first-contact"]) == 3


def test_retired_step_that_is_last_completes_the_enrollment(team):
    n = team
    campaigns = write_campaigns(n.tmp_path / "campaigns", SHORT_SEQUENCE)
    n.load_campaigns(campaigns)
    n.import_csv("email,timezone\nw@example.com,Europe/Moscow\n")
    n.enroll("webinar-follow-up")
    drive(n, until=START + timedelta(days=2))
    assert len(n.smtp.messages) == 1
    write_campaigns(campaigns, SHORT_SEQUENCE.split("  - key: recording")[0])
    assert n.load_campaigns(campaigns).steps_retired == ["webinar-follow-up/recording"]
    drive(n)
    (enrollment,) = n.enrollments()
    assert enrollment.status == "completed"
    assert len(n.smtp.messages) == 1
