"""Load ``campaigns/*.yaml`` and ``templates/email/*.mjml`` into the database.

``load_campaigns`` checks everything first and writes only if every file is
valid: a typo in one file changes nothing. Templates are compiled once per
version (the version grows when the checksum changes). Sequences are upserted
by key; their steps are mapped by stable step key: a step with a known key is
updated in place (enrolled leads get the new delay, template and subjects for
steps they have not reached), a new key is added, and a key that disappeared is
retired (enrollments skip it; messages already sent keep pointing at it).
The pipeline (``pipeline.yaml`` in the campaigns folder, or the shipped default)
is checked with them and synced into the ``Stage`` rows (see ``pipeline.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session, select

from .errors import SequenceFileError, TemplateError
from .models import EmailTemplate, Sequence, Step
from .pipeline import load_pipeline, pipeline_file, sync_pipeline
from .rendering import CompiledSource, compile_template, template_files
from .sequences import DEFAULT_REASON, SequenceSpec, suggest, load_sequence_file, sequence_files


@dataclass
class LoadReport:
    templates_added: list[str] = field(default_factory=list)
    templates_updated: list[str] = field(default_factory=list)
    sequences_added: list[str] = field(default_factory=list)
    sequences_updated: list[str] = field(default_factory=list)
    steps_retired: list[str] = field(default_factory=list)
    stages_added: list[str] = field(default_factory=list)
    stages_updated: list[str] = field(default_factory=list)
    stages_removed: list[str] = field(default_factory=list)
    unchanged: int = 0


def check_campaigns(campaigns_dir: Path, templates_dir: Path, default_language: str) -> tuple[list[SequenceSpec], list[CompiledSource]]:
    """Parse and compile everything; raise one error listing every problem found."""
    problems: list[str] = []
    specs: list[SequenceSpec] = []
    paths: dict[str, Path] = {}
    files = sequence_files(campaigns_dir)
    if not files:
        raise SequenceFileError(f"{campaigns_dir}: no *.yaml sequence files found")
    for path in files:
        try:
            specs.append(load_sequence_file(path))
            paths[specs[-1].key] = path
        except SequenceFileError as exc:
            problems.append(str(exc))
    keys = [spec.key for spec in specs]
    problems += [f"sequence key {key!r} is defined in more than one file" for key in set(keys) if keys.count(key) > 1]
    compiled: list[CompiledSource] = []
    for path in template_files(templates_dir).values():
        try:
            compiled.append(compile_template(path))
        except TemplateError as exc:
            problems.append(str(exc))
    available = {(c.name, c.language) for c in compiled}
    reasons: list[str] = []
    try:  # the pipeline (stages, rules, lost reasons) is checked and loaded with the sequences
        reasons = load_pipeline(pipeline_file(campaigns_dir)).lost_reason_keys
    except SequenceFileError as exc:
        problems.append(str(exc))
    for spec in specs:
        for step in spec.steps:
            where = f"{paths[spec.key]}: step {step.key}"
            for reason in step.templates_by_reason:
                if reason != DEFAULT_REASON and reason not in reasons:
                    problems.append(f"{where}: field 'templates_by_reason.{reason}': unknown lost reason {reason!r} "
                                    f"(known: {', '.join(reasons)}){suggest(reason, reasons)}")
            for name in step.template_names:
                if name and (name, default_language) not in available:
                    problems.append(f"{where}: template {name!r} has no {default_language} version in {templates_dir} "
                                    f"(expected {name}.{default_language}.mjml)")
    if problems:
        raise SequenceFileError("\n".join(problems))
    return specs, compiled


def load_campaigns(session: Session, campaigns_dir: Path, templates_dir: Path, default_language: str, now) -> LoadReport:
    specs, compiled = check_campaigns(campaigns_dir, templates_dir, default_language)
    report = LoadReport()
    for source in compiled:
        upsert_template(session, source, now, report)
    for spec in specs:
        upsert_sequence(session, spec, now, report)
    stages = sync_pipeline(session, load_pipeline(pipeline_file(campaigns_dir)), now)
    report.stages_added, report.stages_updated, report.stages_removed = stages.added, stages.updated, stages.removed
    session.commit()
    return report


def upsert_template(session: Session, source: CompiledSource, now, report: LoadReport) -> None:
    """Store one checked template (a new version when its source changed); the admin's editor saves through this too."""
    row = session.exec(
        select(EmailTemplate).where(EmailTemplate.name == source.name, EmailTemplate.language == source.language)
    ).first()
    label = f"{source.name}.{source.language}"
    if row is None:
        row = EmailTemplate(name=source.name, language=source.language, version=1, checksum=source.checksum,
                            subjects=source.subjects, mjml=source.mjml, html=source.html, text=source.text,
                            updated_at=now)
        session.add(row)
        report.templates_added.append(label)
    elif row.checksum != source.checksum:
        row.version += 1
        row.checksum, row.subjects, row.mjml = source.checksum, source.subjects, source.mjml
        row.html, row.text, row.updated_at = source.html, source.text, now
        report.templates_updated.append(f"{label} (v{row.version})")
    else:
        report.unchanged += 1


def _checksum(spec: SequenceSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def upsert_sequence(session: Session, spec: SequenceSpec, now, report: LoadReport) -> None:
    """Store one checked sequence, mapping steps by key (docs/sequences.md); the admin's builder saves through this too."""
    checksum = _checksum(spec)
    sequence = session.exec(select(Sequence).where(Sequence.key == spec.key)).first()
    if sequence is not None and sequence.checksum == checksum:
        report.unchanged += 1
        return
    if sequence is None:
        sequence = Sequence(key=spec.key, name=spec.name, version=1, created_at=now, updated_at=now)
        session.add(sequence)
        report.sequences_added.append(spec.key)
    else:
        sequence.version += 1
        report.sequences_updated.append(f"{spec.key} (v{sequence.version})")
    sequence.name, sequence.description, sequence.status = spec.name, spec.description, spec.status
    sequence.checksum, sequence.timezone, sequence.updated_at = checksum, spec.timezone, now
    sequence.trigger = spec.trigger
    sequence.send_days = ",".join(spec.send_window.days)
    sequence.send_start, sequence.send_end = spec.send_window.start, spec.send_window.end
    sequence.throttle_per_hour = spec.throttle_per_hour
    sequence.exit_on_reply = spec.exit_on.reply
    sequence.exit_on_domain_reply = spec.exit_on.domain_reply
    sequence.exit_on_click = spec.exit_on.click
    session.flush()
    existing = {step.key: step for step in session.exec(select(Step).where(Step.sequence_id == sequence.id))}
    old_order = sorted(existing.values(), key=lambda step: step.position)
    new_positions = {step_spec.key: position for position, step_spec in enumerate(spec.steps)}
    for position, step_spec in enumerate(spec.steps):
        step = existing.get(step_spec.key) or Step(sequence_id=sequence.id, key=step_spec.key, position=0, kind="")
        step.position, step.kind, step.retired = position, step_spec.kind, False
        step.day_min, step.day_max = step_spec.day_min, step_spec.day_max
        step.condition, step.template, step.goal = step_spec.condition, step_spec.default_template, step_spec.goal
        step.templates_by_reason = dict(step_spec.templates_by_reason)
        anchor = step_spec.anchor
        step.anchor = anchor.anchor if anchor else "enrollment"
        step.anchor_business_days = anchor.business_days_before if anchor else 0
        step.anchor_date = anchor.date if anchor else None
        step.subjects = dict(step_spec.subjects)
        session.add(step)
    for index, step in enumerate(old_order):
        if step.key in new_positions:
            continue
        # A retired step takes the position of the live step that followed it, so
        # an enrollment waiting on it continues there (see scheduling.next_step).
        followers = [new_positions[s.key] for s in old_order[index + 1:] if s.key in new_positions]
        step.position = followers[0] if followers else len(spec.steps)
        if not step.retired:
            step.retired = True
            report.steps_retired.append(f"{spec.key}/{step.key}")
    session.flush()
