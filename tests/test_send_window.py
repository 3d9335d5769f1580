"""Business-time math: local send hours across DST, far-apart zones, weekends, long windows,
and the spread of many leads enrolled at once."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from nurture.models import Enrollment, Lead
from nurture.send_window import SendWindow, inside, pick_send_time, seed_fraction

WEEKDAYS = SendWindow.parse("mon,tue,wed,thu,fri", "09:00", "18:00")
EVERY_DAY = SendWindow.parse("mon,tue,wed,thu,fri,sat,sun", "09:00", "18:00")
LA = ZoneInfo("America/Los_Angeles")
LONDON = ZoneInfo("Europe/London")
VLADIVOSTOK = ZoneInfo("Asia/Vladivostok")
FRACTIONS = [i / 1000 for i in range(1000)] + [0.999999]


def picks(window, tz, origin, day_min, day_max, earliest=None):
    return [pick_send_time(window, tz, origin, day_min, day_max, earliest or origin, f) for f in FRACTIONS]


def assert_business_hours(moments, tz, window=WEEKDAYS):
    for moment in moments:
        local = moment.astimezone(tz)
        assert local.weekday() in window.days, local
        assert time(9) <= local.time() < time(18), local
        assert inside(window, tz, moment)


@pytest.mark.parametrize("tz, change_day", [(LA, date(2026, 3, 8)), (LONDON, date(2026, 3, 29))])
def test_daylight_saving_change_keeps_nine_to_six_local(tz, change_day):
    before = datetime.combine(change_day - timedelta(days=1), time(12), tzinfo=tz)
    after = datetime.combine(change_day + timedelta(days=1), time(12), tzinfo=tz)
    assert before.utcoffset() != after.utcoffset()  # the zone really changes in between

    # Every day of a week around the change, including the change day itself.
    origin = datetime.combine(change_day - timedelta(days=3), time(0), tzinfo=tz)
    moments = picks(EVERY_DAY, tz, origin, 0, 6)
    assert_business_hours(moments, tz, EVERY_DAY)
    per_day = Counter(m.astimezone(tz).date() for m in moments)
    assert sorted(per_day) == [origin.date() + timedelta(days=d) for d in range(7)]
    # Each day holds nine business hours, the change day too: the picks spread evenly.
    assert max(per_day.values()) - min(per_day.values()) <= 2

    # The first and last business moments of the change day are 09:00 and just before 18:00 local.
    on_change = pick_send_time(EVERY_DAY, tz, datetime.combine(change_day, time(0), tzinfo=tz), 0, 0,
                               datetime.combine(change_day, time(0), tzinfo=tz), 0.0)
    assert on_change.astimezone(tz).time() == time(9)
    assert on_change == datetime.combine(change_day, time(9), tzinfo=tz).astimezone(timezone.utc)
    last = pick_send_time(EVERY_DAY, tz, datetime.combine(change_day, time(0), tzinfo=tz), 0, 0,
                          datetime.combine(change_day, time(0), tzinfo=tz), 0.999999)
    assert time(17, 59) <= last.astimezone(tz).time() < time(18)

    # Business days on both sides of the change: 09:00 local maps to different UTC hours.
    friday = (before - timedelta(days=1)).replace(hour=0)
    friday_before = pick_send_time(WEEKDAYS, tz, friday, 0, 0, friday, 0.0)
    monday_after = pick_send_time(WEEKDAYS, tz, after, 0, 0, after.replace(hour=0), 0.0)
    assert friday_before.astimezone(tz).strftime("%a %H:%M") == "Fri 09:00"
    assert monday_after.astimezone(tz).strftime("%a %H:%M") == "Mon 09:00"
    assert friday_before.astimezone(timezone.utc).hour == monday_after.astimezone(timezone.utc).hour + 1


def test_same_utc_enrollment_moment_gives_each_zone_its_own_business_day():
    enrolled = datetime(2026, 3, 4, 0, 0, tzinfo=timezone.utc)  # Wed 10:00 Vladivostok, Tue 16:00 Los Angeles
    assert enrolled.astimezone(VLADIVOSTOK).strftime("%a %H:%M") == "Wed 10:00"
    assert enrolled.astimezone(LA).strftime("%a %H:%M") == "Tue 16:00"
    vladivostok = picks(WEEKDAYS, VLADIVOSTOK, enrolled, 0, 0)
    los_angeles = picks(WEEKDAYS, LA, enrolled, 0, 0)
    assert_business_hours(vladivostok, VLADIVOSTOK)
    assert_business_hours(los_angeles, LA)
    assert {m.astimezone(VLADIVOSTOK).date() for m in vladivostok} == {date(2026, 3, 4)}
    assert {m.astimezone(LA).date() for m in los_angeles} == {date(2026, 3, 3)}
    # Vladivostok has 10:00-18:00 left, Los Angeles only 16:00-18:00.
    assert min(vladivostok) == enrolled and max(vladivostok) > enrolled + timedelta(hours=7, minutes=59)
    assert min(los_angeles) == enrolled and max(los_angeles) > enrolled + timedelta(hours=1, minutes=59)
    assert max(los_angeles) < enrolled + timedelta(hours=2)
    # Two days later the local calendars differ by a day as well.
    assert {pick_send_time(WEEKDAYS, VLADIVOSTOK, enrolled, 2, 2, enrolled, 0.5).astimezone(VLADIVOSTOK).date()} == {date(2026, 3, 6)}
    assert {pick_send_time(WEEKDAYS, LA, enrolled, 2, 2, enrolled, 0.5).astimezone(LA).date()} == {date(2026, 3, 5)}


def test_enrolling_leads_in_vladivostok_and_los_angeles_at_the_same_moment(leads):
    n = leads
    n.at(datetime(2026, 3, 4, 0, 0, tzinfo=timezone.utc))
    n.enroll()
    for email, tz, day, earliest in (("petr@example.org", VLADIVOSTOK, date(2026, 3, 4), time(10)),
                                     ("john@example.net", LA, date(2026, 3, 3), time(16))):
        (enrollment,) = n.enrollments(Enrollment.lead_id == n.lead(email).id)
        local = enrollment.next_run_at.astimezone(tz)
        assert local.date() == day and earliest <= local.time() < time(18), (email, local)


def test_weekends_are_skipped():
    friday_evening = datetime(2026, 3, 6, 17, 30, tzinfo=LONDON)
    # Day 0 from Friday 17:30: the last half hour of Friday.
    today = picks(WEEKDAYS, LONDON, friday_evening, 0, 0)
    assert_business_hours(today, LONDON)
    assert all(m.astimezone(LONDON) >= friday_evening for m in today)
    # Day 1 (Saturday) and day 1-2 (the weekend): no business time inside, so Monday.
    for day_min, day_max in ((1, 1), (1, 2)):
        moments = picks(WEEKDAYS, LONDON, friday_evening, day_min, day_max)
        assert_business_hours(moments, LONDON)
        assert {m.astimezone(LONDON).date() for m in moments} == {date(2026, 3, 9)}
    # A window over a weekend uses only its weekdays.
    moments = picks(WEEKDAYS, LONDON, friday_evening, 0, 4)
    assert_business_hours(moments, LONDON)
    assert {m.astimezone(LONDON).date() for m in moments} == {date(2026, 3, 6), date(2026, 3, 9), date(2026, 3, 10)}


def test_ninety_to_one_eighty_day_window_lands_inside_it():
    origin = datetime(2026, 3, 2, 11, 0, tzinfo=LONDON)
    moments = picks(WEEKDAYS, LONDON, origin, 90, 180)
    assert_business_hours(moments, LONDON)
    first, last = origin.date() + timedelta(days=90), origin.date() + timedelta(days=180)
    local_dates = [m.astimezone(LONDON).date() for m in moments]
    assert all(first <= d <= last for d in local_dates)
    # Spread over the whole window, not bunched at its start.
    assert min(local_dates) <= first + timedelta(days=3) and max(local_dates) >= last - timedelta(days=3)
    months = Counter((d.year, d.month) for d in local_dates)
    assert sorted(months) == [(2026, 6), (2026, 7), (2026, 8)]


def test_the_same_lead_always_gets_the_same_moment():
    origin = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
    assert seed_fraction(42, 1, "follow-up") == seed_fraction(42, 1, "follow-up")
    assert seed_fraction(42, 1, "follow-up") != seed_fraction(43, 1, "follow-up")
    assert seed_fraction(42, 1, "follow-up") != seed_fraction(42, 1, "case-study")
    first = pick_send_time(WEEKDAYS, LONDON, origin, 2, 3, origin, seed_fraction(42, 1, "follow-up"))
    again = pick_send_time(WEEKDAYS, LONDON, origin, 2, 3, origin, seed_fraction(42, 1, "follow-up"))
    assert first == again


def test_reenrolling_a_lead_at_the_same_moment_gives_the_same_schedule(leads):
    n = leads
    n.enroll()
    first = {e.lead_id: e.next_run_at for e in n.enrollments()}
    with n.session() as s:
        s.execute(sa.update(Enrollment).values(status="exited", exit_reason="test", next_run_at=None))
        s.commit()
    n.enroll()
    second = {e.lead_id: e.next_run_at for e in n.enrollments(Enrollment.status == "active")}
    assert second == first
    assert len(set(first.values())) == 4


def test_ten_thousand_leads_enrolled_at_once_are_spread_out(team):
    n = team
    n.load_campaigns()
    rows = "".join(f"lead{i}@example.com\n" for i in range(10_000))
    assert n.import_csv("email\n" + rows).created == 10_000
    assert n.enroll().enrolled == 10_000
    moments = [e.next_run_at for e in n.enrollments()]
    moscow = ZoneInfo("Europe/Moscow")  # the sequence's zone: these leads have none
    assert_business_hours(moments, moscow)
    assert all(m >= n.now for m in moments)
    per_minute = Counter(m.replace(second=0, microsecond=0) for m in moments)
    # 10:00-18:00 Moscow is 480 minutes: about 21 leads a minute, and no minute holds 1 %.
    assert len(per_minute) >= 470
    assert max(per_minute.values()) <= 100
    per_hour = Counter(m.astimezone(moscow).hour for m in moments)
    assert sorted(per_hour) == list(range(10, 18))
    assert max(per_hour.values()) < 1.15 * 10_000 / 8
    assert n.count(Lead) == 10_000
