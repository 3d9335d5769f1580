"""Operations and reps' pages: suppression list, queue health, warm leads by probability, notifications."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from admin_support import create_cast, csrf_token, logged_in, login, post_form
from nurture.analytics.journeys import refresh
from nurture.models import Enrollment, Notification, Suppression
from pipeline_history import add_lead


def test_suppression_add_search_and_remove(leads, web):
    create_cast(leads)
    leads.enroll("systematic-follow-up", emails=["olga@example.com"])
    client = web()
    login(client, "marketer@example.com")
    bad = post_form(client, "/admin/suppression", {"email": "not an address", "reason": "manual"})
    assert bad.status_code == 400 and 'id="error-email"' in bad.get_data(as_text=True)
    post_form(client, "/admin/suppression", {"email": "Olga@Example.com", "reason": "manual", "note": "просила не писать"})
    row = leads.scalar(select(Suppression).where(Suppression.email == "olga@example.com"))
    assert row.reason == "manual" and row.note == "просила не писать"
    assert leads.enrollments(Enrollment.status == "exited")[0].exit_reason == "suppressed: manual"
    post_form(client, "/admin/suppression", {"email": "spam@example.org", "reason": "complaint"})
    found = client.get("/admin/suppression?q=olga").get_data(as_text=True)
    table = found[found.index('id="suppressions"'):found.index("</table>", found.index('id="suppressions"'))]
    assert "olga@example.com" in table and "spam@example.org" not in table
    post_form(client, "/admin/suppression/remove", {"email": "olga@example.com"}, page_url="/admin/suppression")
    assert leads.scalar(select(Suppression).where(Suppression.email == "olga@example.com")) is None
    missing = post_form(client, "/admin/suppression/remove", {"email": "olga@example.com"}, page_url="/admin/suppression",
                        follow_redirects=True)
    assert "is not on the suppression list" in missing.get_data(as_text=True)


def test_queue_health_counts_waiting_and_failed_jobs(nurture, web):
    create_cast(nurture)
    from rq import SimpleWorker

    broken = f"broken-{nurture.settings.queue_name}"  # job ids are global in Redis: unique per test run
    nurture.queue.enqueue("nurture.no_such_module.job", job_id=broken)
    SimpleWorker([nurture.queue], connection=nurture.redis).work(burst=True, logging_level="ERROR")
    nurture.queue.enqueue("nurture.no_such_module.job", job_id=f"waiting-{nurture.settings.queue_name}")
    client = web()
    login(client, "admin@example.com")
    page = client.get("/admin/queue").get_data(as_text=True)
    figures = page[page.index('id="queue-figures"'):page.index("</section>", page.index('id="queue-figures"'))]
    assert '<div class="figure">1</div><div class="muted">queued</div>' in figures.replace("\n", "")
    assert '<div class="figure">1</div><div class="muted">failed</div>' in figures.replace("\n", "")
    assert broken in page and "No worker serves this queue" in page


def test_warm_leads_are_sorted_by_probability_with_the_reason(leads, web):
    ids = create_cast(leads)
    with leads.session() as s:
        two_days_ago = (leads.now - timedelta(days=2)).isoformat()
        for email, probability, why in (
                ("olga@example.com", 0.2, [{"factor": "stage", "stage": "contacted", "points": 15},
                                           {"factor": "open", "points": 5, "count": 2, "at": two_days_ago}]),
                ("emma@example.co.uk", 0.7, [{"factor": "stage", "stage": "engaged", "points": 22},
                                             {"factor": "reply", "points": 9, "at": two_days_ago}])):
            lead = leads.lead(email)
            lead.probability, lead.probability_why = probability, why
            s.add(lead)
        s.commit()
    client = web()
    login(client, "anna.sales@example.com")
    page = client.get("/admin/my/warm").get_data(as_text=True)
    assert page.index("Emma") < page.index("Ольга")
    assert "stage engaged 22%; replied 2 days ago +9" in page
    assert "opened 2 times, last 2 days ago +5" in page
    lead_page = client.get(f"/admin/leads/{leads.lead('emma@example.co.uk').id}").get_data(as_text=True)
    assert "Close probability: <span id=\"probability\">70%</span>" in lead_page
    assert "<li>replied 2 days ago +9</li>" in lead_page
    assert "John" not in page  # ivan's lead
    manager = web()
    login(manager, "manager@example.com")
    assert "John" in manager.get(f"/admin/my/warm?rep={ids['ivan.sales@example.com']}").get_data(as_text=True)


def test_notifications_list_and_done(leads, web):
    ids = create_cast(leads)
    olga = leads.lead("olga@example.com")
    with leads.session() as s:
        s.add(Notification(user_id=ids["anna.sales@example.com"], lead_id=olga.id, kind="rep_task", channel="task",
                           status="open", reason="Call Olga about the offer", created_at=leads.now))
        s.add(Notification(user_id=ids["ivan.sales@example.com"], lead_id=olga.id, kind="warm_up", channel="email",
                           status="sent", reason="Not for Anna", created_at=leads.now))
        s.commit()
        task_id = s.exec(select(Notification.id).where(Notification.reason.like("Call%"))).one()
    client = web()
    login(client, "anna.sales@example.com")
    page = client.get("/admin/my/notifications").get_data(as_text=True)
    assert "Call Olga about the offer" in page and "Not for Anna" not in page
    post_form(client, f"/admin/my/notifications/{task_id}/done", {}, page_url="/admin/my/notifications")
    with leads.session() as s:
        assert s.get(Notification, task_id).status == "done"
    other = leads.scalar(select(Notification.id).where(Notification.reason == "Not for Anna"))
    token = csrf_token(page)
    assert client.post(f"/admin/my/notifications/{other}/done", data={"csrf_token": token}).status_code == 404


def test_notification_links_reach_the_lead_page(leads, web):
    client = logged_in(leads, web, "anna.sales@example.com")
    olga = leads.lead("olga@example.com")
    response = client.get(f"/leads/{olga.id}", follow_redirects=True)
    assert response.status_code == 200 and "Ольга Иванова" in response.get_data(as_text=True)


def test_queue_health_shows_the_stage_changes_waiting_for_the_reports(nurture, web):
    create_cast(nurture)
    with nurture.session() as s:
        add_lead(s, "olga@example.com", [("new", nurture.now - timedelta(days=3)), ("contacted", nurture.now)])
    client = web()
    login(client, "admin@example.com")

    def backlog_card() -> str:
        page = client.get("/admin/queue").get_data(as_text=True)
        return page[page.index('id="report-backlog"'):page.index("</section>", page.index('id="report-backlog"'))]

    assert "<strong>2</strong>" in backlog_card() and "never" in backlog_card()
    with nurture.session() as s:
        refresh(s)
        s.commit()
    card = backlog_card()
    assert "<strong>0</strong>" in card and "never" not in card and "<time" in card
