"""Log in and out; the admin's home page sends each role to where its work is."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from sqlmodel import select

from ..addresses import normalise
from ..models import User
from . import login_throttle
from .access import AdminUser, db_session
from .passwords import password_matches

blueprint = Blueprint("auth", __name__, template_folder="../web_templates")
HOME_BY_ROLE = {"admin": "dashboard.index", "manager": "dashboard.index", "marketer": "sequences.index",
                "rep": "reps.warm"}


@blueprint.route("/login", methods=["GET", "POST"])
def login():
    errors: dict[str, str] = {}
    email = request.form.get("email", "").strip()
    if request.method == "POST":
        redis = current_app.extensions["nurture_redis"]
        ip = request.remote_addr or "unknown"
        wait = login_throttle.seconds_blocked(redis, ip, email)
        if wait:
            errors["form"] = f"Too many failed attempts. Try again in {wait // 60 + 1} minutes."
            return render_template("admin/login.html", errors=errors, email=email), 429
        user = db_session().exec(select(User).where(User.email == normalise(email))).first() if email else None
        if user is None or not user.active or not password_matches(user.password_hash, request.form.get("password", "")):
            login_throttle.record_failure(redis, ip, email)
            errors["form"] = "Wrong email or password."
            return render_template("admin/login.html", errors=errors, email=email), 401
        login_throttle.clear(redis, email)
        login_user(AdminUser(user))
        return redirect(_safe_next(request.args.get("next")) or url_for("auth.home"))
    return render_template("admin/login.html", errors=errors, email=email)


@blueprint.post("/logout")
@login_required
def logout():
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


@blueprint.get("/home")
@login_required
def home():
    return redirect(url_for(HOME_BY_ROLE[current_user.role]))


def _safe_next(target: str | None) -> str | None:
    """Only a path on this site: ``next`` must not become an open redirect."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target
