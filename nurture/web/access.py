"""Who may do what in the admin: login, roles, and which leads a user sees.

Roles (``models.ROLES``): an *admin* may do everything; a *marketer* builds
sequences and templates, imports and enrolls leads and keeps the suppression
list; a *manager* reads the dashboard and every lead; a *rep* works their own
leads only. ``roles_required`` guards a view; ``lead_scope`` narrows a lead
query to what the current user may see. The login session stores the user id
with a fragment of the password hash, so changing a password or deactivating a
user ends their other sessions.
"""

from __future__ import annotations

from functools import wraps

from flask import abort, current_app, g, request, url_for
from flask_login import LoginManager, UserMixin, current_user
from sqlmodel import Session

from .. import db
from ..models import Lead, User

EDITORS = ("admin", "marketer")  # sequences, templates, imports, enrollment, suppression
READERS = ("admin", "marketer", "manager")  # every lead, the dashboard
NAV = (  # (endpoint, label, roles)
    ("dashboard.index", "Dashboard", ("admin", "manager", "marketer")),
    ("reps.warm", "My warm leads", ("rep", "manager", "admin")),
    ("reps.notifications", "Notifications", ("rep", "manager", "admin")),
    ("leads.index", "Leads", ("admin", "marketer", "manager", "rep")),
    ("sequences.index", "Sequences", EDITORS + ("manager",)),
    ("email_templates.index", "Templates", EDITORS),
    ("operations.suppression", "Suppression", EDITORS),
    ("operations.users", "Users", ("admin",)),
    ("operations.queue", "Queue", ("admin",)),
)

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Log in to see this page."
login_manager.login_message_category = "info"


class AdminUser(UserMixin):
    """The logged-in user: a detached copy of the row, enough for permission checks."""

    def __init__(self, row: User) -> None:
        self.id, self.email, self.name, self.role = row.id, row.email, row.name or row.email, row.role
        self._session_id = session_id(row)

    def get_id(self) -> str:
        return self._session_id

    def can(self, *roles: str) -> bool:
        return self.role in roles


def session_id(row: User) -> str:
    return f"{row.id}:{(row.password_hash or '')[-10:]}"


@login_manager.user_loader
def load_user(value: str) -> AdminUser | None:
    user_id, _, _ = value.partition(":")
    if not user_id.isdigit():
        return None
    row = db_session().get(User, int(user_id))
    if row is None or not row.active or session_id(row) != value:
        return None
    return AdminUser(row)


def db_session() -> Session:
    """The request's database session (closed when the request ends)."""
    if "db_session" not in g:
        g.db_session = Session(db.engine_for(current_app.config["NURTURE"].database_url), expire_on_commit=False)
    return g.db_session


def settings():
    return current_app.config["NURTURE"]


def roles_required(*roles: str):
    """Require a login, and one of ``roles`` (403 otherwise)."""

    def decorate(view):
        @wraps(view)
        def guarded(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return guarded

    return decorate


def _own_leads_only() -> bool:
    """Reps see only their own leads, unless ``NURTURE_REPS_SEE_ALL_LEADS`` allows them all."""
    return current_user.role == "rep" and not current_app.config["NURTURE"].reps_see_all_leads


def lead_scope(query):
    """Narrow a ``select`` over ``Lead`` to the leads the current user may see."""
    if _own_leads_only():
        return query.where(Lead.owner_id == current_user.id)
    return query


def lead_for_user(lead_id: int) -> Lead:
    """The lead, or 404 when it does not exist or belongs to another rep."""
    lead = db_session().get(Lead, lead_id)
    if lead is None or (_own_leads_only() and lead.owner_id != current_user.id):
        abort(404)
    return lead


def nav_items() -> list[tuple[str, str, bool]]:
    if not current_user.is_authenticated:
        return []
    current = request.endpoint or ""
    return [(url_for(endpoint), label, current.split(".")[0] == endpoint.split(".")[0] and
             (current == endpoint or endpoint.split(".")[0] not in ("reps", "operations")))
            for endpoint, label, roles in NAV if current_user.role in roles]
