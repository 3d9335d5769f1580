"""Leads in the admin: list filters, what a rep may see, the lead page and its actions, CSV import on RQ."""

from __future__ import annotations

import re
from dataclasses import replace

from sqlmodel import select

from admin_support import create_cast, csrf_token, logged_in, login, post_form
from nurture.models import Enrollment, Lead, Note, StageChange, Suppression

XSS = "<script>alert(1)</script>"


def lead_rows(html: str) -> list[str]:
    table = html[html.index('id="leads"'):html.index("</table>", html.index('id="leads"'))]
    return re.findall(r'<span class="muted">([^<]+@[^<]+)</span>', table)


def test_list_filters_by_stage_owner_tag_and_search(leads, web):
    ids = create_cast(leads)
    client = web()
    login(client, "manager@example.com")
    assert sorted(lead_rows(client.get("/admin/leads").get_data(as_text=True))) == [
        "emma@example.co.uk", "john@example.net", "olga@example.com", "petr@example.org"]
    assert lead_rows(client.get("/admin/leads?q=РОМАШ").get_data(as_text=True)) == ["olga@example.com"]
    assert lead_rows(client.get("/admin/leads?q=100%25").get_data(as_text=True)) == []
    assert sorted(lead_rows(client.get(f"/admin/leads?owner={ids['ivan.sales@example.com']}").get_data(as_text=True))) == [
        "john@example.net", "petr@example.org"]
    assert lead_rows(client.get("/admin/leads?tag=pricing").get_data(as_text=True)) == ["petr@example.org"]
    with leads.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == "emma@example.co.uk")).one()
        lead.probability = 0.42
        s.add(lead)
        s.commit()
    assert lead_rows(client.get("/admin/leads?p_min=40&p_max=50").get_data(as_text=True)) == ["emma@example.co.uk"]
    bad = client.get("/admin/leads?p_min=abc").get_data(as_text=True)
    assert 'id="error-p_min"' in bad and len(lead_rows(bad)) == 4
    leads.enroll("systematic-follow-up", emails=["john@example.net"])
    sequence_id = leads.enrollments()[0].sequence_id
    assert lead_rows(client.get(f"/admin/leads?sequence={sequence_id}").get_data(as_text=True)) == ["john@example.net"]


def test_a_rep_sees_only_their_own_leads(leads, web):
    client = logged_in(leads, web, "anna.sales@example.com")
    assert sorted(lead_rows(client.get("/admin/leads").get_data(as_text=True))) == ["emma@example.co.uk", "olga@example.com"]
    john = leads.lead("john@example.net")
    assert client.get(f"/admin/leads/{john.id}").status_code == 404
    token = csrf_token(client.get("/admin/leads").get_data(as_text=True))
    assert client.post(f"/admin/leads/{john.id}/notes", data={"body": "x", "csrf_token": token}).status_code == 404
    olga = leads.lead("olga@example.com")
    assert client.post(f"/admin/leads/{olga.id}/enroll", data={"sequence_id": "1", "csrf_token": token}).status_code == 403


def test_reps_see_every_lead_when_the_setting_allows_it(leads, web):
    leads.settings = replace(leads.settings, reps_see_all_leads=True)
    client = logged_in(leads, web, "anna.sales@example.com")
    assert len(lead_rows(client.get("/admin/leads").get_data(as_text=True))) == 4
    john = leads.lead("john@example.net")
    assert client.get(f"/admin/leads/{john.id}").status_code == 200


def test_lead_data_is_escaped_everywhere(cast, web):
    create_cast(cast)
    report = cast.import_csv(f"email,first_name,company,owner\nxss@example.com,{XSS},\"<img src=x onerror=alert(2)>\","
                             "anna.sales@example.com\n")
    assert report.created == 1
    client = web()
    login(client, "admin@example.com")
    lead = cast.lead("xss@example.com")
    with cast.session() as s:
        s.add(Note(lead_id=lead.id, body=XSS, created_at=cast.now))
        s.commit()
    for url in ("/admin/leads", f"/admin/leads/{lead.id}", f"/admin/my/warm?rep={lead.owner_id}"):
        html = client.get(url).get_data(as_text=True)
        assert "<script>alert(1)" not in html and "<img src=x" not in html, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, url


def test_stage_change_needs_a_lost_reason_for_lost(leads, web):
    ids = create_cast(leads)
    client = web()
    login(client, "anna.sales@example.com")
    olga = leads.lead("olga@example.com")
    url = f"/admin/leads/{olga.id}"
    refused = post_form(client, f"{url}/stage", {"stage": "lost", "note": ""}, page_url=url, follow_redirects=True)
    assert "Stage not changed: moving to lost needs a lost reason" in refused.get_data(as_text=True)
    assert leads.lead("olga@example.com").stage == "new"
    moved = post_form(client, f"{url}/stage", {"stage": "lost", "lost_reason": "price", "note": "too expensive"},
                      page_url=url, follow_redirects=True)
    assert "Stage is now lost." in moved.get_data(as_text=True)
    change = leads.scalar(select(StageChange).where(StageChange.lead_id == olga.id))
    assert (change.to_stage, change.lost_reason, change.reason, change.by_user_id) == (
        "lost", "price", "manual", ids["anna.sales@example.com"])
    page = client.get(url).get_data(as_text=True)
    assert "Stage new → lost" in page and "reason: price" in page
    bad_value = post_form(client, f"{url}/stage", {"stage": "won", "deal_value": "lots"}, page_url=url, follow_redirects=True)
    assert "deal value &#39;lots&#39; is not a number" in bad_value.get_data(as_text=True)


def test_notes_enroll_unenroll_and_suppress_from_the_lead_page(leads, web):
    client = logged_in(leads, web, "marketer@example.com")
    john = leads.lead("john@example.net")
    url = f"/admin/leads/{john.id}"
    post_form(client, f"{url}/notes", {"body": "Звонил, просит КП"}, page_url=url)
    assert "Звонил, просит КП" in client.get(url).get_data(as_text=True)
    empty = post_form(client, f"{url}/notes", {"body": "  "}, page_url=url, follow_redirects=True)
    assert "Note not added" in empty.get_data(as_text=True)
    sequence_id = re.search(r'<option value="(\d+)">Systematic', client.get(url).get_data(as_text=True))[1]
    enrolled = post_form(client, f"{url}/enroll", {"sequence_id": sequence_id}, page_url=url, follow_redirects=True)
    assert "Enrolled in" in enrolled.get_data(as_text=True)
    twice = post_form(client, f"{url}/enroll", {"sequence_id": sequence_id}, page_url=url, follow_redirects=True)
    assert "Not enrolled: already enrolled" in twice.get_data(as_text=True)
    enrollment = leads.enrollments(Enrollment.lead_id == john.id)[0]
    post_form(client, f"{url}/unenroll", {"enrollment_id": str(enrollment.id)}, page_url=url)
    assert leads.enrollments(Enrollment.lead_id == john.id)[0].status == "exited"
    post_form(client, f"{url}/suppress", {"note": "asked by phone"}, page_url=url)
    row = leads.scalar(select(Suppression).where(Suppression.email == "john@example.net"))
    assert row.reason == "manual" and row.note == "asked by phone"
    assert "suppressed: manual" in client.get(url).get_data(as_text=True)


def test_csv_import_runs_on_the_worker_with_progress_and_rejects(cast, web):
    client = logged_in(cast, web, "marketer@example.com")
    csv_bytes = ("email;first_name;company\nok@example.com;Олег;Ромашка\nnot-an-email;Bad;Row\n"
                 "ok2@example.com;Kate;Acme\n").encode()
    page = client.get("/admin/leads/import").get_data(as_text=True)
    from io import BytesIO

    response = client.post("/admin/leads/import", data={"csrf_token": csrf_token(page), "tags": "webinar",
                                                        "file": (BytesIO(csv_bytes), "leads.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 302
    progress_url = response.headers["Location"]
    status_url = progress_url + "/status"
    assert client.get(status_url).get_json()["state"] == "queued"
    cast.work()
    state = client.get(status_url).get_json()
    assert state["state"] == "done" and state["created"] == 2 and state["rejected"] == 1
    page = client.get(progress_url).get_data(as_text=True)
    assert "Download the 1 rejected row(s)" in page
    rejects = client.get(progress_url + "/rejects.csv")
    text = rejects.get_data(as_text=True)
    assert rejects.mimetype == "text/csv" and "line,reason,email" in text and "\n3," in text and "not-an-email" in text
    assert cast.lead("ok@example.com").first_name == "Олег"
    other = web()
    login(other, "admin@example.com")
    assert other.get(status_url).status_code == 200  # an admin may look; another marketer may not


def test_an_unreadable_csv_fails_with_the_reason(cast, web):
    client = logged_in(cast, web, "marketer@example.com")
    from io import BytesIO

    page = client.get("/admin/leads/import").get_data(as_text=True)
    empty = client.post("/admin/leads/import", data={"csrf_token": csrf_token(page), "file": (BytesIO(b""), "x.csv")},
                        content_type="multipart/form-data")
    assert empty.status_code == 400 and "x.csv is empty" in empty.get_data(as_text=True)
    response = client.post("/admin/leads/import", data={"csrf_token": csrf_token(page),
                                                        "file": (BytesIO(b"name,company\nA,B\n"), "nomail.csv")},
                           content_type="multipart/form-data")
    cast.work()
    state = client.get(response.headers["Location"] + "/status").get_json()
    assert state["state"] == "failed" and "Nothing was imported" in state["message"] and "email" in state["message"]


def test_search_pages_and_counts_past_one_page(cast, web):
    create_cast(cast)
    rows = "".join(f"buyer{i}@acme.example,Покупатель {i},ACME Holding\n" for i in range(60))
    cast.import_csv("email,first_name,company\n" + rows + "other@example.org,Other,Elsewhere\n")
    client = web()
    login(client, "manager@example.com")
    first = client.get("/admin/leads?q=acme").get_data(as_text=True)
    assert len(lead_rows(first)) == 50 and "Page 1 of 2" in first and "Leads <span class=\"muted\">60</span>" in first
    second = client.get("/admin/leads?q=acme&page=2").get_data(as_text=True)
    assert len(lead_rows(second)) == 10 and "Page 2 of 2" in second
    beyond = client.get("/admin/leads?q=acme&page=5").get_data(as_text=True)
    assert lead_rows(beyond) == [] and "Leads <span class=\"muted\">60</span>" in beyond
    assert len(lead_rows(client.get("/admin/leads?q=ПОКУПАТЕЛЬ").get_data(as_text=True))) == 50


def test_enroll_the_filtered_segment(leads, web):
    create_cast(leads)
    leads.enroll("systematic-follow-up", emails=["petr@example.org"])
    client = web()
    login(client, "marketer@example.com")
    page = client.get("/admin/leads?tag=webinar").get_data(as_text=True)
    assert "Enroll all 2 matching leads in" in page
    sequence_id = leads.enrollments()[0].sequence_id
    response = client.post("/admin/leads/enroll?tag=webinar", data={"sequence_id": str(sequence_id),
                                                                    "csrf_token": csrf_token(page)}, follow_redirects=True)
    text = response.get_data(as_text=True)
    assert "Enrolled 1 of 2 matching leads" in text and "not enrolled, already enrolled: 1" in text
    enrolled = {leads.scalar(select(Lead.email).where(Lead.id == e.lead_id)) for e in leads.enrollments()}
    assert enrolled == {"petr@example.org", "olga@example.com"}
    rep = web()
    login(rep, "anna.sales@example.com")
    token = csrf_token(rep.get("/admin/leads").get_data(as_text=True))
    assert rep.post("/admin/leads/enroll", data={"sequence_id": str(sequence_id), "csrf_token": token}).status_code == 403
