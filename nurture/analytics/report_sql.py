"""Room for report queries: the analytics sort and hash millions of stage changes at once.

PostgreSQL's default ``work_mem`` (4 MB) sends a sort of five million rows, or a
hash of a million leads, to temporary files on disk; ``tune_for_reports`` raises
it for the current transaction only (``SET LOCAL``: it ends with the commit or
rollback, so other work on the connection is untouched), and turns JIT
compilation off, which took a second per report query and won nothing. Every report function
calls it first; SQLite needs nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session

from ..db import is_postgresql

REPORT_WORK_MEM = "256MB"  # per sort or hash node of one report query; the machine has memory, reports are rare


def tune_for_reports(session: Session) -> None:
    if is_postgresql(session):
        session.execute(sa.text(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'"))
        session.execute(sa.text("SET LOCAL jit = off"))  # compiling these CASE-heavy plans cost more than it saved
