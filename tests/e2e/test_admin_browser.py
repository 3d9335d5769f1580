"""End to end in headless Chromium (Debian's, driven by Playwright) against the admin on a real loopback server.

A marketer logs in, builds a three-step sequence, previews a template, imports a
CSV with a bad row and a hostile name, enrolls a lead, a real RQ worker sends,
and the message shows on the lead's timeline; a rep is kept out of the builder;
a form without a CSRF token is refused; no script in lead data ever runs.
Screenshots of the main pages go to ``tests/artifacts/`` (git-ignored).
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from sqlmodel import select
from werkzeug.serving import make_server

from admin_support import CAST, PASSWORD, create_cast
from pipeline_history import simulate
from test_admin_dashboard import CONVERSIONS
from conftest import free_port, send_due
from nurture.models import Lead, Message, Sequence

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
XSS = "<script>alert(1)</script>"
CSV = ("email,first_name,last_name,company,timezone,language,owner\n"
       "olga@example.com,Ольга,Иванова,Ромашка,Europe/Moscow,ru,anna.sales@example.com\n"
       "broken-address,Bad,Row,Nowhere,UTC,en,\n"
       f"xss@example.com,{XSS},Smith,\"<img src=x onerror=alert(2)>\",UTC,en,anna.sales@example.com\n")


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail("needs Debian's chromium: apt-get install chromium (.ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def live_admin(cast):
    """The admin of this test's settings, served by werkzeug on a loopback port, with the user cast."""
    from nurture.app import create_app

    create_cast(cast)
    port = free_port()
    app = create_app(replace(cast.settings, base_url=f"http://127.0.0.1:{port}"))
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join()
    app.extensions["nurture_redis"].close()


@pytest.fixture
def page(browser, live_admin):
    context = browser.new_context(base_url=live_admin, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()


def shot(page: Page, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=full_page)


def log_in(page: Page, email: str) -> None:
    page.goto("/admin/login")
    page.fill("#f-email", email)
    page.fill("#f-password", PASSWORD)
    page.click("button[type=submit]")
    name, role = CAST[email]
    expect(page.locator("header .who")).to_contain_text(f"{name} · {role}")


def fill_step(page: Page, index: int, **fields) -> None:
    for name, value in fields.items():
        locator = page.locator(f"[name='step-{index}-{name}']")
        if locator.evaluate("e => e.tagName") == "SELECT":
            locator.select_option(value)
        else:
            locator.fill(value)


def test_marketer_journey_from_sequence_to_sent_message(page: Page, cast):
    page.goto("/admin/login")
    shot(page, "login")
    log_in(page, "marketer@example.com")

    # build a three-step sequence
    page.click("text=New sequence")
    page.fill("#f-name", "Webinar follow-up")
    page.fill("#f-key", "webinar")
    page.fill("#f-timezone", "Europe/Moscow")
    fill_step(page, 0, key="hello", kind="first_contact", template="first_contact", subjects_en="Hi {{ lead.first_name }}")
    page.click("#add-step")
    page.click("#add-step")
    fill_step(page, 1, key="nudge", kind="follow_up", day_min="2", day_max="3", template="follow_up")
    fill_step(page, 2, key="case", kind="case_study", day_min="14", day_max="14", template="case_study")
    page.click("#save-sequence")
    expect(page.locator(".flash.success")).to_contain_text("Saved.")
    expect(page.locator(".step")).to_have_count(3)
    page.click("button[value=activate]")
    expect(page.locator(".flash.success")).to_contain_text("is now active")
    shot(page, "sequence-builder")

    # preview a template at desktop and phone width
    page.click("header nav >> text=Templates")
    page.click("text=first_contact >> nth=0")
    expect(page.locator("#preview")).to_have_attribute("data-rendered", "yes")
    expect(page.frame_locator("#preview-desktop").locator("body")).to_contain_text("Anna")
    expect(page.frame_locator("#preview-phone").locator("body")).to_contain_text("Anna")
    assert page.locator("#preview-phone").bounding_box()["width"] == 375
    expect(page.locator("#preview-text")).to_contain_text("Anna")
    page.fill("#f-subjects", "New subject for {{ lead.company }}")
    expect(page.locator("#preview-subject")).to_have_text("New subject for Example Ltd")
    page.fill("#f-mjml", "<mjml>\n<mj-body>\n<mj-bogus></mj-bogus>\n</mj-body>\n</mjml>")
    expect(page.locator("#preview-error")).to_contain_text("Line 3")
    page.click("#save-template")
    expect(page.locator("#error-line")).to_have_text("Error on line 3")
    page.click("header nav >> text=Templates")
    page.click("text=first_contact >> nth=0")
    expect(page.locator("#preview")).to_have_attribute("data-rendered", "yes")
    shot(page, "template-editor")

    # import a CSV with a bad row; a real worker runs the job
    page.click("header nav >> text=Leads")
    page.click("text=Import CSV")
    page.set_input_files("#f-file", files=[{"name": "leads.csv", "mimeType": "text/csv", "buffer": CSV.encode()}])
    page.click("#start-import")
    expect(page.locator("#import-state")).to_contain_text("Waiting for a worker")
    cast.work()
    expect(page.locator("#import-state")).to_contain_text("Done: 2 created", timeout=10000)
    with page.expect_download() as download:
        page.click("#rejects-link")
    rejects = Path(download.value.path()).read_text(encoding="utf-8-sig")
    assert rejects.splitlines()[0].startswith("line,reason,email") and "\n3,email 'broken-address': An email address must have an @-sign." in rejects.replace("\r", "")
    shot(page, "import-done")

    # enroll a lead from its page; the scheduler and a worker send the first step
    page.click("text=See the leads")
    page.fill("#f-q", "ольга")
    page.click("text=Filter")
    expect(page.locator("#leads tbody tr")).to_have_count(1)
    shot(page, "leads")
    page.click("#leads >> text=Ольга Иванова")
    page.select_option("#f-sequence_id", label="Webinar follow-up")
    page.click("#enroll")
    expect(page.locator(".flash.success")).to_contain_text("Enrolled in Webinar follow-up")
    send_due(cast)
    olga = cast.lead("olga@example.com")
    assert [m.status for m in cast.messages(Message.lead_id == olga.id)] == ["sent"]
    page.reload()
    expect(page.locator("#timeline")).to_contain_text("Email · hello (webinar)")
    expect(page.locator("#timeline .entry-message .badge")).to_have_text("sent")
    page.fill("#f-note", "Позвонить в четверг")
    page.click("#add-note")
    expect(page.locator("#timeline")).to_contain_text("Позвонить в четверг")
    shot(page, "lead")
    page.set_viewport_size({"width": 375, "height": 800})
    page.reload()
    shot(page, "lead-phone")
    page.set_viewport_size({"width": 1280, "height": 900})

    # the hostile name renders as text, and no dialog ever opened
    xss = cast.lead("xss@example.com")
    page.goto(f"/admin/leads/{xss.id}")
    expect(page.locator("#lead-name")).to_have_text(f"{XSS} Smith")
    page.goto("/admin/leads?q=xss")
    expect(page.locator("#leads")).to_contain_text(XSS)
    assert page.dialogs == []

    # a form posted without its CSRF token is refused and changes nothing
    refused = page.request.post("/admin/suppression", form={"email": "victim@example.com", "reason": "manual"})
    assert refused.status == 400 and "CSRF" in refused.text()
    page.goto("/admin/suppression")
    expect(page.locator("#suppressions")).not_to_contain_text("victim@example.com")
    shot(page, "suppression")


def test_rep_cannot_open_the_sequence_editor(page: Page, cast):
    cast.import_csv("email,first_name,company,owner\nlead@example.com,Лена,Вектор,anna.sales@example.com\n")
    with cast.session() as s:
        lead = s.exec(select(Lead).where(Lead.email == "lead@example.com")).one()
        lead.probability, lead.probability_why = 0.35, [
            {"factor": "stage", "stage": "engaged", "points": 22},
            {"factor": "reply", "points": 9, "at": (cast.now - timedelta(days=2)).isoformat()}]
        s.add(lead)
        s.commit()
        sequence_id = s.exec(select(Sequence.id)).first()
    log_in(page, "anna.sales@example.com")
    expect(page.locator("h1")).to_have_text("My warm leads")
    expect(page.locator("#warm-leads")).to_contain_text("replied 2 days ago")
    shot(page, "warm-leads")
    expect(page.locator("header nav")).not_to_contain_text("Sequences")
    response = page.goto(f"/admin/sequences/{sequence_id}")
    assert response.status == 403
    assert page.goto("/admin/sequences/new").status == 403
    assert page.dialogs == []


def test_admin_pages_render_for_screenshots(page: Page, cast):
    with cast.session() as s:
        simulate(s, CONVERSIONS, 150, cast.now - timedelta(days=120))
    log_in(page, "admin@example.com")
    page.goto("/admin/dashboard")
    page.fill("#f-deals", "10")
    page.fill("#f-by_date", (cast.now + timedelta(days=120)).date().isoformat())
    page.click("#make-plan")
    expect(page.locator(".flash.success")).to_contain_text("Plan stored")
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    for name, url in (("dashboard", "/admin/dashboard"), ("sequences", "/admin/sequences"), ("users", "/admin/users"),
                      ("queue", "/admin/queue"), ("notifications", "/admin/my/notifications")):
        response = page.goto(url)
        assert response.status == 200, url
        shot(page, name)
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/admin/sequences")
    page.click("label.nav-button")
    expect(page.locator("header nav")).to_be_visible()
    shot(page, "sequences-phone")
    assert page.dialogs == []
