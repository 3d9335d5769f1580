"""A lead has its close probability, with the why, from the moment it exists (CSV import, admin upload, CRM
history), and it follows the lead's stage when a rep moves it (CLI, admin)."""

from __future__ import annotations

from io import BytesIO

import pytest
from sqlmodel import select

from admin_support import csrf_token, logged_in
from nurture.models import Event, Lead
from nurture.probability import ProbabilityChange, rescore


def computed_now(n, emails: list[str]) -> dict[str, ProbabilityChange]:
    """What ``rescore`` computes for these leads at the harness's clock, without storing it; ``before`` is the stored value."""
    with n.session() as s:
        ids = dict(s.exec(select(Lead.id, Lead.email).where(Lead.email.in_(emails))).all())
        changes = rescore(s, n.settings, list(ids), n.now)
        s.rollback()
    assert sorted(ids.values()) == sorted(emails), "a lead is missing"
    return {ids[change.lead_id]: change for change in changes}


def assert_scored_as_computed(n, emails: list[str]) -> dict[str, Lead]:
    """Every lead's stored probability and why are what ``rescore`` computes now, stamped with the clock."""
    computed = computed_now(n, emails)
    leads = {lead.email: lead for lead in n.all(select(Lead).where(Lead.email.in_(emails)))}
    for email, change in computed.items():
        lead = leads[email]
        assert lead.probability_at == n.now, email
        assert lead.probability == pytest.approx(change.after, abs=1e-12), (email, lead.probability, change.after)
        assert lead.probability_why == change.why and lead.probability_why[0] == {
            **lead.probability_why[0], "factor": "stage", "stage": lead.stage}, (email, lead.probability_why)
    return leads


def why_text(n, email: str) -> str:
    return n.cli("leads", "why", email, check=True).stdout.strip()


def test_every_lead_of_a_cli_import_has_the_new_stage_probability_and_why(cast):
    n = cast
    emails = [f"lead{i}@example.com" for i in range(1201)]  # three of the import's chunks
    path = n.tmp_path / "leads.csv"
    path.write_text("email;first_name;company\n" + "".join(f"{e};Ольга;Ромашка\n" for e in emails), encoding="utf-8")
    proc = n.cli("leads", "import", str(path), check=True)
    assert "created: 1201" in proc.stdout
    leads = assert_scored_as_computed(n, emails)
    assert {lead.stage for lead in leads.values()} == {"new"}
    assert len({lead.probability for lead in leads.values()}) == 1 and leads[emails[0]].probability > 0
    percent = round(leads[emails[0]].probability * 100)
    assert why_text(n, emails[-1]).startswith(f"{emails[-1]}: {percent}%: stage new ")
    n.advance(hours=1)
    assert "created: 0  updated: 1201" in n.cli("leads", "import", str(path), check=True).stdout
    assert {lead.email: lead.probability_at for lead in n.all(select(Lead))} == {e: leads[e].probability_at for e in emails}


def test_a_lead_uploaded_in_the_admin_shows_its_probability_and_why_on_its_page(cast, web):
    n = cast
    client = logged_in(n, web, "marketer@example.com")
    page = client.get("/admin/leads/import").get_data(as_text=True)
    response = client.post("/admin/leads/import", data={"csrf_token": csrf_token(page),
                                                        "file": (BytesIO(b"email,first_name\nkate@example.com,Kate\n"), "l.csv")},
                           content_type="multipart/form-data")
    assert response.status_code == 302
    n.work()  # the import job, on the real RQ worker
    kate = assert_scored_as_computed(n, ["kate@example.com"])["kate@example.com"]
    assert kate.stage == "new" and kate.probability > 0
    html = client.get(f"/admin/leads/{kate.id}").get_data(as_text=True)
    assert f'<span id="probability">{round(kate.probability * 100)}%</span>' in html
    assert 'id="probability-why"' in html and "stage new" in html


def test_a_history_import_scores_the_leads_it_creates_and_moves_for_their_stage(cast):
    n = cast
    leads_csv = n.tmp_path / "leads.csv"
    leads_csv.write_text("email\nolga@example.com\n", encoding="utf-8")
    n.cli("leads", "import", str(leads_csv), check=True)
    new_probability = n.lead("olga@example.com").probability
    history_csv = n.tmp_path / "history.csv"
    history_csv.write_text(
        "email;stage;entered_at;lost_reason\n"
        "olga@example.com;contacted;2026-01-10;\nolga@example.com;qualified;2026-02-01;\n"  # an existing lead, moved
        "petr@example.org;contacted;2026-01-15;\npetr@example.org;engaged;2026-02-03;\n"  # created, open
        "john@example.net;contacted;2026-01-12;\njohn@example.net;lost;2026-02-01;price\n",  # created, closed
        encoding="utf-8")
    proc = n.cli("history", "import", str(history_csv), check=True)
    assert "leads created: 2  leads updated: 1" in proc.stdout
    emails = ["olga@example.com", "petr@example.org", "john@example.net"]
    leads = assert_scored_as_computed(n, emails)
    assert [leads[e].stage for e in emails] == ["qualified", "engaged", "lost"]
    assert leads["olga@example.com"].probability > leads["petr@example.org"].probability > new_probability > 0
    assert leads["john@example.net"].probability == 0
    assert why_text(n, "olga@example.com").startswith(f"olga@example.com: {round(leads['olga@example.com'].probability * 100)}%: "
                                                      "stage qualified ")


def test_a_reimport_keeps_the_probability_that_engagement_earned(cast):
    n = cast
    path = n.tmp_path / "leads.csv"
    path.write_text("email;first_name\nolga@example.com;Ольга\npetr@example.org;Пётр\n", encoding="utf-8")
    n.cli("leads", "import", str(path), check=True)
    with n.session() as s:
        s.add(Event(lead_id=n.lead("olga@example.com").id, kind="reply", occurred_at=n.now, data={"text": "Интересно"}))
        s.commit()
    n.cli("leads", "rescore", "--email", "olga@example.com", check=True)
    engaged, fresh = n.lead("olga@example.com"), n.lead("petr@example.org")
    assert engaged.probability > fresh.probability > 0
    path.write_text("email;first_name;company\nolga@example.com;Оля;Ромашка\npetr@example.org;Петя;Вектор\n", encoding="utf-8")
    n.advance(hours=1)
    proc = n.cli("leads", "import", str(path), check=True)
    assert "created: 0  updated: 2" in proc.stdout
    for before in (engaged, fresh):
        after = n.lead(before.email)
        assert after.company and (after.probability, after.probability_why, after.probability_at) == (
            before.probability, before.probability_why, before.probability_at)
    assert any(item["factor"] == "reply" for item in n.lead("olga@example.com").probability_why)


def test_a_stage_moved_by_hand_gives_the_new_stages_probability_at_once(cast, web):
    n = cast
    path = n.tmp_path / "leads.csv"
    path.write_text("email;first_name\nolga@example.com;Ольга\npetr@example.org;Пётр\n", encoding="utf-8")
    n.cli("leads", "import", str(path), check=True)
    new_probability = n.lead("olga@example.com").probability
    n.advance(hours=1)
    n.cli("leads", "stage", "olga@example.com", "proposal", check=True)
    olga = assert_scored_as_computed(n, ["olga@example.com"])["olga@example.com"]
    assert olga.stage == "proposal" and olga.probability > new_probability
    n.advance(hours=1)
    client = logged_in(n, web, "marketer@example.com")
    petr = n.lead("petr@example.org")
    page = client.get(f"/admin/leads/{petr.id}").get_data(as_text=True)
    response = client.post(f"/admin/leads/{petr.id}/stage", data={"csrf_token": csrf_token(page), "stage": "qualified"})
    assert response.status_code == 302
    petr = assert_scored_as_computed(n, ["petr@example.org"])["petr@example.org"]
    assert petr.stage == "qualified" and new_probability < petr.probability < olga.probability
