"""The sequence builder: build, edit safely while leads are enrolled, field errors, status changes."""

from __future__ import annotations

import html
import re

from sqlmodel import select

from admin_support import create_cast, csrf_token, logged_in, login
from nurture.models import Enrollment, Sequence, Step


def builder_form(steps: list[dict], **sequence) -> dict:
    data = {"key": "webinar", "name": "Webinar follow-up", "timezone": "Europe/Moscow", "send_days": ["mon", "tue", "wed"],
            "send_start": "10:00", "send_end": "17:00", "throttle_per_hour": "50", "exit_reply": "on",
            "step_count": str(len(steps)), "action": "save", **sequence}
    for i, step in enumerate(steps):
        row = {"key": f"s{i}", "kind": "follow_up", "day_min": str(3 * i), "day_max": str(3 * i), "template": "follow_up",
               "condition": "always", "goal": "", "subjects_en": "", "subjects_ru": "", **step}
        data.update({f"step-{i}-{k}": v for k, v in row.items()})
    return data


def open_builder(client, url="/admin/sequences/new") -> str:
    page = client.get(url)
    assert page.status_code == 200
    return csrf_token(page.get_data(as_text=True))


def test_marketer_builds_a_three_step_sequence(cast, web):
    client = logged_in(cast, web, "marketer@example.com")
    token = open_builder(client)
    response = client.post("/admin/sequences/new", data={**builder_form([
        {"key": "hello", "kind": "first_contact", "template": "first_contact", "subjects_en": "Hi {{ lead.first_name }}\nHello there"},
        {"key": "again", "day_min": "2", "day_max": "3"},
        {"key": "case", "kind": "case_study", "template": "case_study", "day_min": "14", "day_max": "14"},
    ]), "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)
    with cast.session() as s:
        sequence = s.exec(select(Sequence).where(Sequence.key == "webinar")).one()
        steps = s.exec(select(Step).where(Step.sequence_id == sequence.id).order_by(Step.position)).all()
    assert sequence.status == "draft" and sequence.send_days == "mon,tue,wed" and sequence.throttle_per_hour == 50
    assert [(s.key, s.kind, s.day_min, s.day_max) for s in steps] == [
        ("hello", "first_contact", 0, 0), ("again", "follow_up", 2, 3), ("case", "case_study", 14, 14)]
    assert steps[0].subjects == {"en": ["Hi {{ lead.first_name }}", "Hello there"]}
    listing = client.get("/admin/sequences").get_data(as_text=True)
    assert "Webinar follow-up" in listing and "draft" in listing


def test_errors_are_shown_next_to_their_fields_and_nothing_is_saved(cast, web):
    client = logged_in(cast, web, "marketer@example.com")
    token = open_builder(client)
    response = client.post("/admin/sequences/new", data={**builder_form([
        {"key": "Bad Key!"}, {"day_min": "9", "day_max": "2"}, {"template": "no_such_template"},
    ], send_start="25:00", timezone="Mars/Olympus"), "csrf_token": token})
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    for field in ("step-0-key", "step-1-day_min", "step-2-template", "timezone"):
        assert f'id="error-{field}"' in page, field
    assert "no template named &#39;no_such_template&#39;" in page
    assert cast.scalar(select(Sequence).where(Sequence.key == "webinar")) is None


def test_add_move_and_remove_steps_without_saving(cast, web):
    client = logged_in(cast, web, "marketer@example.com")
    token = open_builder(client)
    form = builder_form([{"key": "a"}, {"key": "b"}])
    moved = client.post("/admin/sequences/new", data={**form, "action": "up-1", "csrf_token": token}).get_data(as_text=True)
    assert moved.index('value="b"') < moved.index('value="a"')
    added = client.post("/admin/sequences/new", data={**form, "action": "add", "csrf_token": token}).get_data(as_text=True)
    assert 'name="step_count" value="3"' in added
    removed = client.post("/admin/sequences/new", data={**form, "action": "remove-0", "csrf_token": token}).get_data(as_text=True)
    assert 'name="step_count" value="1"' in removed and 'value="a"' not in removed
    assert cast.scalar(select(Sequence).where(Sequence.key == "webinar")) is None


def test_editing_an_active_sequence_says_what_happens_to_enrolled_leads(leads, web):
    create_cast(leads)
    leads.enroll("systematic-follow-up")
    client = web()
    login(client, "marketer@example.com")
    with leads.session() as s:
        sequence = s.exec(select(Sequence).where(Sequence.key == "systematic-follow-up")).one()
        steps = s.exec(select(Step).where(Step.sequence_id == sequence.id, Step.retired == False)  # noqa: E712
                       .order_by(Step.position)).all()
    url = f"/admin/sequences/{sequence.id}"
    page = client.get(url).get_data(as_text=True)
    assert "4 lead(s) are enrolled" in page
    first, rest = steps[0], steps[1:]
    rows = [{"key": s.key, "kind": s.kind, "day_min": str(s.day_min), "day_max": str(s.day_max), "template": s.template,
             "condition": s.condition, "goal": s.goal} for s in steps]
    del rows[0]  # remove the step everyone waits on
    data = builder_form(rows, key=sequence.key, name=sequence.name)
    review = client.post(url, data={**data, "action": "review", "csrf_token": csrf_token(page)}).get_data(as_text=True)
    assert "If you save now:" in review and f"Step &#39;{first.key}&#39; is removed (retired): 4 lead(s)" in review
    with leads.session() as s:
        assert not s.get(Step, first.id).retired  # reviewing saves nothing
    response = client.post(url, data={**data, "csrf_token": csrf_token(page)}, follow_redirects=True)
    text = response.get_data(as_text=True)
    assert f"Step &#39;{first.key}&#39; is removed (retired): 4 lead(s) waiting on it will continue at step &#39;{rest[0].key}&#39;" in text
    with leads.session() as s:
        assert s.get(Step, first.id).retired
        waiting = s.exec(select(Enrollment.next_step_id).where(Enrollment.status == "active")).all()
    assert set(waiting) == {first.id}  # scheduling skips the retired step: the enrollment is not rewritten


def test_activate_pause_and_archive(cast, web):
    client = logged_in(cast, web, "marketer@example.com")
    sequence = cast.scalar(select(Sequence).where(Sequence.key == "systematic-follow-up"))
    url = f"/admin/sequences/{sequence.id}"
    token = csrf_token(client.get(url).get_data(as_text=True))
    for action, status in (("pause", "paused"), ("activate", "active"), ("archive", "archived")):
        response = client.post(f"{url}/status", data={"action": action, "csrf_token": token}, follow_redirects=True)
        assert f"is now {status}" in response.get_data(as_text=True)
        with cast.session() as s:
            assert s.get(Sequence, sequence.id).status == status
    assert client.post(f"{url}/status", data={"action": "explode", "csrf_token": token}).status_code == 400


def test_saving_from_the_builder_keeps_anchors_and_templates_by_reason(cast, web):
    client = logged_in(cast, web, "marketer@example.com")
    with cast.session() as s:
        before = {seq.key: [(st.key, st.anchor, st.anchor_business_days, st.anchor_date, st.template, st.templates_by_reason)
                            for st in s.exec(select(Step).where(Step.sequence_id == seq.id, Step.retired == False)  # noqa: E712
                                             .order_by(Step.position))]
                  for seq in s.exec(select(Sequence))}
        ids = dict(s.exec(select(Sequence.key, Sequence.id)).all())
        triggers = dict(s.exec(select(Sequence.key, Sequence.trigger)).all())
    kept = [key for key, steps in before.items() if any(a != "enrollment" or by_reason for _, a, _, _, _, by_reason in steps)]
    assert kept, "the shipped campaigns have anchored or per-reason steps"
    for key in kept:
        url = f"/admin/sequences/{ids[key]}"
        page = client.get(url).get_data(as_text=True)
        assert "Kept from the campaigns file" in page
        form = {name: value for name, value in re.findall(r'<input[^>]* name="([^"]+)" value="([^"]*)"', page)}
        form.update({name: value for name, value in re.findall(
            r'<select id="f-[^"]+" name="([^"]+)">.*?<option value="([^"]*)" selected', page, re.S)})
        form.update({name: html.unescape(value) for name, value in re.findall(
            r'<textarea id="f-[^"]+" name="([^"]+)"[^>]*>([^<]*)</textarea>', page)})
        form = {k: html.unescape(v) for k, v in form.items()}
        form["send_days"] = re.findall(r'name="send_days" value="(\w+)" checked', page)
        form["action"] = "save"
        for flag in ("exit_reply", "exit_domain_reply", "exit_click"):
            if re.search(rf'name="{flag}" checked', page):
                form[flag] = "on"
        response = client.post(url, data=form, follow_redirects=True)
        assert response.status_code == 200 and "Nothing had changed." in response.get_data(as_text=True), key
    with cast.session() as s:
        after = {seq.key: [(st.key, st.anchor, st.anchor_business_days, st.anchor_date, st.template, st.templates_by_reason)
                           for st in s.exec(select(Step).where(Step.sequence_id == seq.id, Step.retired == False)  # noqa: E712
                                            .order_by(Step.position))]
                 for seq in s.exec(select(Sequence))}
        assert dict(s.exec(select(Sequence.key, Sequence.trigger)).all()) == triggers
    assert after == before
