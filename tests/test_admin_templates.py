"""The template editor: save-time checks with the line, preview for a chosen lead, test send over SMTP."""

from __future__ import annotations

import json

from sqlmodel import select

from admin_support import csrf_token, logged_in
from nurture.models import EmailTemplate


def template_id(n, name="first_contact", language="en") -> int:
    return n.scalar(select(EmailTemplate.id).where(EmailTemplate.name == name, EmailTemplate.language == language))


def open_editor(n, web):
    """A marketer's client on the first_contact.en editor: (client, template id, CSRF token, its MJML)."""
    client = logged_in(n, web, "marketer@example.com")
    tid = template_id(n)
    token = csrf_token(client.get(f"/admin/templates/{tid}").get_data(as_text=True))
    with n.session() as s:
        return client, tid, token, s.get(EmailTemplate, tid).mjml


def test_saving_a_broken_template_shows_the_line_and_keeps_the_old_version(cast, web):
    client, tid, token, _ = open_editor(cast, web)
    broken = "<mjml>\n  <mj-body>\n    <mj-section>\n      <mj-colum>\n        <mj-text>Hi</mj-text>\n" \
             "      </mj-colum>\n    </mj-section>\n  </mj-body>\n</mjml>\n"
    response = client.post(f"/admin/templates/{tid}", data={"subjects": "Hello", "mjml": broken,
                                                           "csrf_token": token})
    text = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Error on line 4" in text and "unknown MJML tag &lt;mj-colum&gt;" in text
    assert 'id="error-mjml"' in text
    with cast.session() as s:
        assert s.get(EmailTemplate, tid).version == 1


def test_unknown_variable_in_a_subject_is_reported_on_the_subjects_field(cast, web):
    client, tid, token, mjml = open_editor(cast, web)
    response = client.post(f"/admin/templates/{tid}", data={"subjects": "Hi {{ lead.nickname }}", "mjml": mjml,
                                                           "csrf_token": token})
    text = response.get_data(as_text=True)
    assert response.status_code == 400 and 'id="error-subjects"' in text and "nickname" in text


def test_a_valid_edit_is_saved_as_a_new_version(cast, web):
    client, tid, token, mjml = open_editor(cast, web)
    response = client.post(f"/admin/templates/{tid}", data={"subjects": "Привет, {{ lead.first_name }}\nHi",
                                                           "mjml": mjml.replace("</mj-body>", "<mj-section><mj-column><mj-text>P.S. Новое</mj-text></mj-column></mj-section></mj-body>"),
                                                           "csrf_token": token}, follow_redirects=True)
    assert "version 2" in response.get_data(as_text=True)
    with cast.session() as s:
        saved = s.get(EmailTemplate, tid)
    assert saved.version == 2 and saved.subjects == ["Привет, {{ lead.first_name }}", "Hi"] and "P.S. Новое" in saved.html


def test_preview_renders_the_unsaved_source_for_the_chosen_lead(leads, web):
    client, tid, token, mjml = open_editor(leads, web)
    olga = leads.lead("olga@example.com")
    response = client.post("/admin/templates/preview", data={
        "name": "first_contact", "language": "en", "subjects": "For {{ lead.company }}", "mjml": mjml,
        "lead_id": str(olga.id)}, headers={"X-CSRFToken": token})
    data = json.loads(response.get_data())
    assert data["subject"] == 'For ООО "Ромашка"'
    assert "Ольга" in data["html"] and "Ольга" in data["text"]
    sample = json.loads(client.post("/admin/templates/preview", data={
        "name": "first_contact", "language": "en", "subjects": "x", "mjml": "<mjml><mj-body><mj-text>{{ lead.first_name }</mj-text></mj-body></mjml>"},
        headers={"X-CSRFToken": token}).get_data())
    assert sample["field"] == "mjml" and "Jinja syntax error" in sample["error"] and sample["line"] == 1
    assert client.post("/admin/templates/preview", data={"subjects": "x", "mjml": mjml}).status_code == 400  # no token


def test_test_send_goes_to_the_logged_in_user_over_smtp(leads, web):
    client, tid, token, _ = open_editor(leads, web)
    olga = leads.lead("olga@example.com")
    response = client.post(f"/admin/templates/{tid}/test", data={"lead_id": str(olga.id), "csrf_token": token},
                           follow_redirects=True)
    assert "Test sent to marketer@example.com" in response.get_data(as_text=True)
    (mail_from, rcpts, _raw), = leads.smtp.messages
    assert rcpts == ["marketer@example.com"]
    parsed = leads.smtp.parsed()[0]
    assert parsed["Subject"].startswith("[test] ")
    assert "Ольга" in parsed.get_body(("plain",)).get_content()


def test_creating_a_template_checks_its_name(cast, web):
    client, _, token, _ = open_editor(cast, web)
    bad = client.post("/admin/templates/new", data={"name": "Bad Name", "language": "en", "csrf_token": token})
    assert bad.status_code == 400 and 'id="error-name"' in bad.get_data(as_text=True)
    taken = client.post("/admin/templates/new", data={"name": "first_contact", "language": "en", "csrf_token": token})
    assert "first_contact.en exists already" in taken.get_data(as_text=True)
    created = client.post("/admin/templates/new", data={
        "name": "webinar", "language": "ru", "subjects": "Запись вебинара",
        "mjml": '<mjml><mj-body><mj-section><mj-column><mj-text>Здравствуйте, {{ lead.first_name }}</mj-text></mj-column></mj-section><mj-include path="_footer.ru.mjml" /></mj-body></mjml>',
        "csrf_token": token})
    assert created.status_code == 302
    assert template_id(cast, "webinar", "ru") is not None
