"""The dashboard shows the analytics functions' figures; managers make plans; reps stay out."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from admin_support import create_cast, csrf_token, login
from nurture.models import Plan
from pipeline_history import simulate

CONVERSIONS = {"new": 0.9, "contacted": 0.6, "engaged": 0.5, "qualified": 0.6, "proposal": 0.5, "negotiation": 0.6}


def manager_with_history(n, web, leads: int, days: int):
    """The cast, ``leads`` simulated leads entering from ``days`` ago, and a manager's logged-in client."""
    create_cast(n)
    with n.session() as s:
        simulate(s, CONVERSIONS, leads, n.now - timedelta(days=days))
    client = web()
    login(client, "manager@example.com")
    return client


def test_dashboard_shows_funnel_bottleneck_forecast_and_charts(nurture, web):
    client = manager_with_history(nurture, web, 120, 120)
    page = client.get("/admin/dashboard").get_data(as_text=True)
    assert 'id="funnel"' in page and "120 leads" in page
    assert "Bottleneck" in page and ("No bottleneck" in page or "Bottleneck: " in page)
    assert 'id="forecast"' in page and ">total<" in page
    table = page[page.index('id="stage-probabilities"'):page.index("</table>", page.index('id="stage-probabilities"'))]
    assert table.count("<tr>") == 1 + 10  # the header and the shipped pipeline's ten stages
    for chart in ("/admin/dashboard/funnel.svg", "/admin/dashboard/conversion.svg"):
        response = client.get(chart)
        assert response.status_code == 200 and response.mimetype == "image/svg+xml"
        assert response.get_data().lstrip().startswith(b"<?xml") and b"<svg" in response.get_data()


def test_a_manager_makes_a_plan_with_field_errors_first(nurture, web):
    client = manager_with_history(nurture, web, 200, 150)
    token = csrf_token(client.get("/admin/dashboard").get_data(as_text=True))
    bad = client.post("/admin/dashboard/plan", data={"deals": "0", "by_date": "yesterday", "confidence": "120",
                                                    "csrf_token": token})
    text = bad.get_data(as_text=True)
    assert bad.status_code == 400
    for field in ("deals", "by_date", "confidence"):
        assert f'id="error-{field}"' in text, field
    assert nurture.count(Plan) == 0
    by_date = (nurture.now + timedelta(days=90)).date().isoformat()
    made = client.post("/admin/dashboard/plan", data={"deals": "5", "by_date": by_date, "confidence": "80",
                                                     "csrf_token": token}, follow_redirects=True)
    assert "Plan stored:" in made.get_data(as_text=True)
    stored = nurture.scalar(select(Plan))
    assert stored.deals == 5 and stored.by_date.isoformat() == by_date and stored.confidence == 0.8
    assert "5 deal(s) by" in made.get_data(as_text=True)


def test_reps_cannot_see_the_dashboard_and_marketers_cannot_plan(nurture, web):
    create_cast(nurture)
    rep = web()
    login(rep, "anna.sales@example.com")
    assert rep.get("/admin/dashboard").status_code == 403
    assert rep.get("/admin/dashboard/funnel.svg").status_code == 403
    marketer = web()
    login(marketer, "marketer@example.com")
    page = marketer.get("/admin/dashboard")
    assert page.status_code == 200 and "Make a plan" not in page.get_data(as_text=True)
    assert marketer.post("/admin/dashboard/plan", data={"deals": "1", "csrf_token": csrf_token(page.get_data(as_text=True))}
                         ).status_code == 403
