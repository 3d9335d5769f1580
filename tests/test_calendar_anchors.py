"""Calendar-anchored steps: K business days before the next quarter or month (or a date), in the
lead's zone, across quarter and year boundaries, the date line and DST, and the too-close rule."""

from __future__ import annotations

from datetime import date, datetime, time, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from nurture.calendar_anchors import Anchor, anchored_send_time, target_day
from nurture.errors import SequenceFileError
from nurture.models import Enrollment, Step
from nurture.send_window import SendWindow, inside

from conftest import START, drive, write_campaigns

WEEKDAYS = SendWindow.parse("mon,tue,wed,thu,fri", "09:00", "18:00")
MOSCOW = ZoneInfo("Europe/Moscow")
KIRITIMATI = ZoneInfo("Pacific/Kiritimati")  # UTC+14: first to see a new day
PAGO_PAGO = ZoneInfo("Pacific/Pago_Pago")  # UTC-11: among the last
FRACTIONS = [i / 200 for i in range(200)] + [0.999999]


def local(day: date, hour: int, tz: ZoneInfo, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=tz)


def sends(anchor: Anchor, tz: ZoneInfo, earliest: datetime, window: SendWindow = WEEKDAYS) -> list[datetime]:
    moments = [anchored_send_time(window, tz, anchor, earliest, f) for f in FRACTIONS]
    for moment in moments:
        assert moment.tzinfo is not None and moment >= earliest
        assert inside(window, tz, moment), moment.astimezone(tz)
    return moments


def days_of(moments: list[datetime], tz: ZoneInfo) -> set[date]:
    return {m.astimezone(tz).date() for m in moments}


QUARTER_5 = Anchor("quarter_start", 5)


def test_five_business_days_before_the_next_quarter_skip_the_weekend():
    # Quarter starts Wednesday 1 April 2026: back over Tue 31, Mon 30, Fri 27, Thu 26, Wed 25 March.
    moments = sends(QUARTER_5, MOSCOW, local(date(2026, 3, 10), 10, MOSCOW))
    assert days_of(moments, MOSCOW) == {date(2026, 3, 25)}
    # Spread over that whole day's send hours, the same lead always the same moment.
    local_times = sorted(m.astimezone(MOSCOW).time() for m in moments)
    assert local_times[0] == time(9) and local_times[-1] >= time(17, 55)
    assert anchored_send_time(WEEKDAYS, MOSCOW, QUARTER_5, START, 0.3) == anchored_send_time(WEEKDAYS, MOSCOW, QUARTER_5, START, 0.3)


def test_the_anchor_crosses_the_year_boundary():
    # From December the next quarter is 1 January 2027 (a Friday); Christmas Day 2026 is the fifth business day before.
    moments = sends(QUARTER_5, MOSCOW, local(date(2026, 12, 1), 12, MOSCOW))
    assert days_of(moments, MOSCOW) == {date(2026, 12, 25)}


def test_a_lead_whose_quarter_starts_tomorrow_rolls_to_the_following_quarter():
    # 31 March: the fifth business day before 1 April is already past: the next chance is before 1 July.
    moments = sends(QUARTER_5, MOSCOW, local(date(2026, 3, 31), 10, MOSCOW))
    assert days_of(moments, MOSCOW) == {date(2026, 6, 24)}


def test_a_target_day_of_today_sends_in_what_is_left_of_today():
    one_day_before = Anchor("quarter_start", 1)
    earliest = local(date(2026, 3, 31), 15, MOSCOW)
    moments = sends(one_day_before, MOSCOW, earliest)
    assert days_of(moments, MOSCOW) == {date(2026, 3, 31)}
    assert min(moments) == earliest  # "send now": from this moment to the end of the send hours
    # After the send hours, today is gone: the following quarter.
    late = sends(one_day_before, MOSCOW, local(date(2026, 3, 31), 18, MOSCOW, 30))
    assert days_of(late, MOSCOW) == {date(2026, 6, 30)}


def test_the_anchor_day_itself_counts_as_the_next_one():
    # On 1 April (a quarter start) with K=0 the anchor is today; with K=1 yesterday has passed: next quarter.
    earliest = local(date(2026, 4, 1), 9, MOSCOW)
    assert days_of(sends(Anchor("quarter_start", 0), MOSCOW, earliest), MOSCOW) == {date(2026, 4, 1)}
    assert days_of(sends(Anchor("quarter_start", 1), MOSCOW, earliest), MOSCOW) == {date(2026, 6, 30)}


def test_both_sides_of_the_date_line_see_their_own_calendar():
    # One instant: already 1 April 00:30 in Kiritimati, still 30 March 23:30 in Pago Pago.
    instant = datetime(2026, 3, 31, 10, 30, tzinfo=timezone.utc)
    assert instant.astimezone(KIRITIMATI).date() == date(2026, 4, 1)
    assert instant.astimezone(PAGO_PAGO).date() == date(2026, 3, 30)
    day_before = Anchor("quarter_start", 1)
    # Pago Pago: the quarter starts in two days, the day before it (31 March) is still ahead.
    assert days_of(sends(day_before, PAGO_PAGO, instant), PAGO_PAGO) == {date(2026, 3, 31)}
    # Kiritimati: the new quarter has begun, 31 March is gone: the day before 1 July.
    assert days_of(sends(day_before, KIRITIMATI, instant), KIRITIMATI) == {date(2026, 6, 30)}
    # K=0: each sends on its own 1 April, 21 hours of UTC apart at the same local hour.
    kiritimati = anchored_send_time(WEEKDAYS, KIRITIMATI, Anchor("quarter_start", 0), instant, 0.0)
    pago_pago = anchored_send_time(WEEKDAYS, PAGO_PAGO, Anchor("quarter_start", 0), instant, 0.0)
    assert kiritimati == datetime(2026, 3, 31, 19, 0, tzinfo=timezone.utc)  # 09:00 on 1 April at UTC+14
    assert pago_pago == datetime(2026, 4, 1, 20, 0, tzinfo=timezone.utc)  # 09:00 on 1 April at UTC-11


@pytest.mark.parametrize("tz, anchor, earliest, expected_day", [
    # London springs forward on Sunday 29 March 2026: the days before and after the change.
    ("Europe/London", Anchor("quarter_start", 5), date(2026, 3, 16), date(2026, 3, 25)),
    ("Europe/London", Anchor("quarter_start", 1), date(2026, 3, 16), date(2026, 3, 31)),
    # Los Angeles falls back on Sunday 1 November 2026; the month starts on that very Sunday.
    ("America/Los_Angeles", Anchor("month_start", 0), date(2026, 10, 20), date(2026, 11, 2)),
    ("America/Los_Angeles", Anchor("month_start", 1), date(2026, 10, 20), date(2026, 10, 30)),
])
def test_daylight_saving_changes_keep_local_send_hours(tz, anchor, earliest, expected_day):
    zone = ZoneInfo(tz)
    moments = sends(anchor, zone, local(earliest, 10, zone))
    assert days_of(moments, zone) == {expected_day}
    first = min(moments)
    assert first == local(expected_day, 9, zone).astimezone(timezone.utc)
    assert all(time(9) <= m.astimezone(zone).time() < time(18) for m in moments)


def test_month_start_counts_back_over_a_weekend():
    # 1 March 2026 is a Sunday: two business days before it are Thursday 26 February.
    assert target_day(WEEKDAYS, date(2026, 3, 1), 2) == date(2026, 2, 26)
    moments = sends(Anchor("month_start", 2), MOSCOW, local(date(2026, 2, 20), 10, MOSCOW))
    assert days_of(moments, MOSCOW) == {date(2026, 2, 26)}


def test_a_fixed_date_in_the_past_goes_out_at_the_next_business_moment():
    anchor = Anchor("date", 2, date(2026, 3, 5))
    assert days_of(sends(anchor, MOSCOW, local(date(2026, 2, 2), 10, MOSCOW)), MOSCOW) == {date(2026, 3, 3)}
    # Friday evening, the date long gone: Monday morning, not never.
    late = sends(anchor, MOSCOW, local(date(2026, 3, 13), 19, MOSCOW))
    assert days_of(late, MOSCOW) == {date(2026, 3, 16)}


def test_anchor_values_are_checked():
    with pytest.raises(ValueError, match="business_days_before must be between 0 and 60"):
        Anchor("quarter_start", -1)
    with pytest.raises(ValueError, match="unknown anchor 'year_start'"):
        Anchor("year_start", 1)
    with pytest.raises(ValueError, match="a date anchor needs its date"):
        Anchor("date", 1)


ANCHORED = """\
key: quarterly
name: Quarterly
timezone: Europe/Moscow
steps:
  - key: hello
    kind: first_contact
    day: 0
    template: first_contact
  - key: before-quarter
    kind: news
    anchor: {kind: quarter_start, business_days_before: 5}
    template: news
  - key: on-date
    kind: news
    anchor: {date: 2026-09-15, business_days_before: 0}
    template: news
"""


def test_anchored_steps_load_and_schedule_from_the_previous_touch(leads):
    n = leads
    campaigns = write_campaigns(n.tmp_path / "anchored", ANCHORED)
    n.load_campaigns(campaigns)
    steps = {s.key: s for s in n.all(select(Step))}
    assert (steps["before-quarter"].anchor, steps["before-quarter"].anchor_business_days) == ("quarter_start", 5)
    assert (steps["on-date"].anchor, steps["on-date"].anchor_date) == ("date", date(2026, 9, 15))
    n.enroll("quarterly", emails=["olga@example.com", "petr@example.org"])
    drive(n, until=datetime(2026, 3, 10, tzinfo=timezone.utc))  # first contacts, in each lead's business hours
    assert len(n.smtp.messages) == 2
    waiting = n.enrollments(Enrollment.status == "active")
    assert {e.next_step_id for e in waiting} == {steps["before-quarter"].id}
    for enrollment in waiting:
        tz = MOSCOW if enrollment.lead_id == n.lead("olga@example.com").id else ZoneInfo("Asia/Vladivostok")
        assert enrollment.next_run_at.astimezone(tz).date() == date(2026, 3, 25)
        assert inside(WEEKDAYS, tz, enrollment.next_run_at)


@pytest.mark.parametrize("anchor, field, reason", [
    ("{kind: quarter_start, date: 2027-01-15}", "anchor",
     "give either kind (quarter_start or month_start) or date (YYYY-MM-DD), not both"),
    ("{kind: quarter_start, business_days_before: -2}", "anchor.business_days_before",
     "Input should be greater than or equal to 0"),
    ("{kind: quater_start}", "anchor.kind", "'quater_start' is not one of quarter_start, month_start (did you mean 'quarter_start'?)"),
    ('{date: "15.01.2027"}', "anchor.date", "Input should be a valid date"),
    ("{kind: month_start, business_day_before: 3}", "anchor.business_day_before",
     "unknown field (did you mean 'business_days_before'?)"),
])
def test_bad_anchors_name_file_step_and_field(nurture, anchor, field, reason):
    document = ANCHORED.replace("{kind: quarter_start, business_days_before: 5}", anchor)
    campaigns = write_campaigns(nurture.tmp_path / "bad", document)
    with pytest.raises(SequenceFileError) as info:
        nurture.load_campaigns(campaigns)
    message = str(info.value)
    assert message.startswith(f"{campaigns / 'quarterly.yaml'}: step 2 (before-quarter): field '{field}': "), message
    assert reason in message


def test_an_anchored_step_with_a_day_is_refused(nurture):
    document = ANCHORED.replace("    anchor: {kind: quarter_start, business_days_before: 5}\n",
                                "    anchor: {kind: quarter_start, business_days_before: 5}\n    day: 40\n")
    campaigns = write_campaigns(nurture.tmp_path / "bad", document)
    with pytest.raises(SequenceFileError, match=r"step 2 \(before-quarter\): an anchored step takes no day"):
        nurture.load_campaigns(campaigns)


def test_an_impossible_date_is_a_clear_error(nurture):
    campaigns = write_campaigns(nurture.tmp_path / "bad", ANCHORED.replace("2026-09-15", "2026-13-15"))
    with pytest.raises(SequenceFileError) as info:
        nurture.load_campaigns(campaigns)
    assert str(info.value) == f"{campaigns / 'quarterly.yaml'}: not valid YAML: month must be in 1..12"
