"""The admin UI: Flask blueprints for marketers, reps, managers and admins.

``init_admin(app)`` attaches everything the admin needs to an app built by
``nurture.app.create_app``: Flask-Login (users from the ``user`` table), CSRF
checks on every admin form (Flask-WTF; only the admin blueprints are checked,
so the public unsubscribe and tracking endpoints keep working without a
session), one database session per request, and one blueprint per area:
``auth``, ``sequences``, ``email_templates``, ``leads``, ``lead_imports``,
``reps``, ``dashboard``, ``operations``. Pages live under ``/admin``; their
Jinja templates are in ``nurture/web_templates/admin``.
"""

from __future__ import annotations

from flask import Flask, g, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect

from .access import login_manager, nav_items

csrf = CSRFProtect()
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
ADMIN_BLUEPRINTS = {"auth", "sequences", "email_templates", "leads", "lead_imports", "reps", "dashboard", "operations"}


def init_admin(app: Flask) -> None:
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)  # checked by the admin blueprints only
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # the token lives as long as the session
    app.config.setdefault("MAX_CONTENT_LENGTH", MAX_UPLOAD_BYTES)
    app.config.update(REMEMBER_COOKIE_HTTPONLY=True, REMEMBER_COOKIE_SAMESITE="Lax",
                      REMEMBER_COOKIE_SECURE=app.config.get("SESSION_COOKIE_SECURE", False))
    csrf.init_app(app)
    login_manager.init_app(app)

    from . import auth, dashboard, email_templates, lead_imports, leads, operations, reps, sequences

    for module in (auth, sequences, email_templates, leads, lead_imports, reps, dashboard, operations):
        app.register_blueprint(module.blueprint, url_prefix="/admin")
    app.before_request(_check_csrf)

    app.context_processor(lambda: {"nav_items": nav_items()})
    app.teardown_appcontext(_close_session)

    @app.errorhandler(CSRFError)
    def csrf_refused(error):
        return render_template("admin/error.html", title="Form expired or forged",
                               message=f"{error.description} Reload the page and send the form again."), 400

    @app.get("/admin")
    @app.get("/admin/")
    def admin_home():
        return redirect(url_for("auth.home"))

    @app.get("/leads/<int:lead_id>")
    def lead_link(lead_id: int):  # the address rep notifications link to
        return redirect(url_for("leads.show", lead_id=lead_id))


def _check_csrf() -> None:
    if request.method not in ("GET", "HEAD", "OPTIONS") and request.blueprint in ADMIN_BLUEPRINTS:
        csrf.protect()


def _close_session(_exc) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
