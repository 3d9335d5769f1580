"""Email templates are checked when loaded (MJML structure, Jinja syntax, unknown variables),
with the file and line; rendering escapes lead data in HTML and always has a text part."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from sqlmodel import select

from nurture.errors import SequenceFileError, TemplateError
from nurture.models import EmailTemplate, Lead, User
from nurture.rendering import Renderer, compile_template, template_files
from nurture.sending import render_context

from conftest import CAMPAIGNS_DIR, TEMPLATES_DIR

GOOD = """\
---
subjects:
  - "Hello {{ lead.first_name }}"
  - "News for {{ lead.company or 'you' }}"
---
<mjml>
  <mj-body>
    <mj-section>
      <mj-column>
        <mj-text>Hi {{ lead.first_name }},</mj-text>
        <mj-text>How is {{ lead.company }}?</mj-text>
        <mj-button href="{{ base_url }}/offer">See the offer</mj-button>
        <mj-text><a href="{{ unsubscribe_url }}">Unsubscribe</a></mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>
"""
COMPANY_LINE = 11  # the line of "How is {{ lead.company }}?" in GOOD


@pytest.fixture
def folder(tmp_path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    for partial in TEMPLATES_DIR.glob("_*.mjml"):
        shutil.copy(partial, folder)
    return folder


def compile_error(folder: Path, source: str, name: str = "probe.en.mjml") -> str:
    path = folder / name
    path.write_text(source, encoding="utf-8")
    with pytest.raises(TemplateError) as info:
        compile_template(path)
    return str(info.value)


def test_a_good_template_compiles_with_html_and_text_parts(folder):
    (folder / "good.en.mjml").write_text(GOOD, encoding="utf-8")
    compiled = compile_template(folder / "good.en.mjml")
    assert compiled.subjects == ["Hello {{ lead.first_name }}", "News for {{ lead.company or 'you' }}"]
    assert "<html" in compiled.html and "{{ lead.company }}" in compiled.html
    assert "How is {{ lead.company }}?" in compiled.text
    assert "See the offer ({{ base_url }}/offer)" in compiled.text
    assert "<" not in compiled.text


def test_unclosed_mjml_tag_is_rejected_with_file_and_line(folder):
    source = GOOD.replace("        <mj-text>How is {{ lead.company }}?</mj-text>\n", "        <mj-text>How is {{ lead.company }}?\n")
    message = compile_error(folder, source)
    assert message.startswith(f"{folder / 'probe.en.mjml'} line {COMPANY_LINE}: MJML error: <mj-text> is not closed")


def test_unclosed_mjml_column_is_reported_at_its_opening_line(folder):
    source = GOOD.replace("      </mj-column>\n", "")
    message = compile_error(folder, source)
    assert message == (f"{folder / 'probe.en.mjml'} line 9: MJML error: <mj-column> is not closed before "
                       "</mj-section> on line 14")  # the removed line shifts it up


def test_unknown_mjml_tag_is_rejected_with_file_and_line(folder):
    source = GOOD.replace("<mj-text>How is {{ lead.company }}?</mj-text>", "<mj-txt>How is {{ lead.company }}?</mj-txt>")
    message = compile_error(folder, source)
    assert message == f"{folder / 'probe.en.mjml'} line {COMPANY_LINE}: MJML error: unknown MJML tag <mj-txt>"


def test_jinja_syntax_error_is_rejected_with_the_line(folder):
    message = compile_error(folder, GOOD.replace("{{ lead.company }}?", "{{ lead.company }?"))
    assert message.startswith(f"{folder / 'probe.en.mjml'} line {COMPANY_LINE}: body: Jinja syntax error:")


def test_unknown_variable_is_rejected_at_load_time_with_the_line(folder):
    message = compile_error(folder, GOOD.replace("lead.company }}?", "lead.compnay }}?"))
    assert message.startswith(f"{folder / 'probe.en.mjml'} line {COMPANY_LINE}: body: unknown variable:")
    assert "compnay" in message


def test_unknown_variable_in_a_subject_names_the_subject_and_its_line(folder):
    message = compile_error(folder, GOOD.replace('"Hello {{ lead.first_name }}"', '"Hello {{ lead.frist_name }}"'))
    assert "subject 1: unknown variable" in message and "frist_name" in message
    # The subject is written on line 3 of the file; a line number, if given, must be that one.
    lines = re.findall(r" line (\d+)", message)
    assert lines in ([], ["3"]), message


def test_unknown_variable_in_a_partial_names_the_partial(folder):
    (folder / "_bad_footer.en.mjml").write_text(
        "<mj-section>\n  <mj-column>\n    <mj-text>{{ lead.nickname }}</mj-text>\n  </mj-column>\n</mj-section>\n",
        encoding="utf-8")
    source = GOOD.replace("  </mj-body>", '    <mj-include path="_bad_footer.en.mjml" />\n  </mj-body>')
    message = compile_error(folder, source)
    assert "nickname" in message
    # The mistake is on line 3 of the partial: the error must lead the author there.
    assert "_bad_footer.en.mjml" in message, message


def test_template_without_front_matter_is_rejected(folder):
    message = compile_error(folder, GOOD.split("---\n", 2)[2])
    assert message.startswith(f"{folder / 'probe.en.mjml'} line 1: start with front matter")


def test_broken_template_is_rejected_by_campaign_loading_and_nothing_is_written(nurture, tmp_path):
    templates = tmp_path / "all-templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    path = templates / "news.en.mjml"
    path.write_text(path.read_text(encoding="utf-8").replace("{{ lead.first_name }}", "{{ lead.first_nam }}", 1),
                    encoding="utf-8")
    with pytest.raises(SequenceFileError) as info:
        nurture.load_campaigns(CAMPAIGNS_DIR, templates)
    assert f"{path} line " in str(info.value) and "first_nam" in str(info.value)
    assert nurture.count(EmailTemplate) == 0


def test_rendering_escapes_a_script_in_lead_data_in_html_only(cast):
    n = cast
    with n.session() as s:
        template = s.exec(select(EmailTemplate).where(EmailTemplate.name == "first_contact",
                                                      EmailTemplate.language == "en")).one()
        owner = s.exec(select(User)).first()
    lead = Lead(id=1, email="x@example.com", first_name="<script>alert(1)</script>", last_name="O'Brien & Co",
                company='"Quotes" <b>Bold</b>', custom={})
    context = render_context(n.settings, lead, owner, "https://nurture.example.com/u/1-abc")
    rendered = Renderer().render(template, template.subjects[0], context)
    assert rendered.subject == '<script>alert(1)</script>, a quick question about "Quotes" <b>Bold</b>'
    assert "<script>alert(1)</script>" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert "<b>Bold</b>" not in rendered.html and "&lt;b&gt;Bold&lt;/b&gt;" in rendered.html
    assert "Hi <script>alert(1)</script>," in rendered.text
    assert "https://nurture.example.com/u/1-abc" in rendered.html and "https://nurture.example.com/u/1-abc" in rendered.text


def test_every_shipped_template_has_a_text_part_with_the_unsubscribe_link(cast):
    n = cast
    templates = n.all(select(EmailTemplate))
    assert len(templates) == len(template_files(TEMPLATES_DIR)) >= 12
    owner = n.scalar(select(User))
    for template in templates:
        lead = Lead(id=7, email="olga@example.com", first_name="Ольга", last_name="Иванова", company="Ромашка", custom={})
        context = render_context(n.settings, lead, owner, "https://nurture.example.com/u/7-token")
        for subject in template.subjects:
            rendered = Renderer().render(template, subject, context)
            assert rendered.subject and "\n" not in rendered.subject
            assert rendered.text.strip(), template.name
            assert "https://nurture.example.com/u/7-token" in rendered.text, (template.name, template.language)
            assert not re.search(r"<(p|div|table|td|a|span|mj-[a-z]+)[\s>]", rendered.text), template.name
            assert "{{" not in rendered.text and "{%" not in rendered.text
            assert "{{" not in rendered.html and "{%" not in rendered.html
