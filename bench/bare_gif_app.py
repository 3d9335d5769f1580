"""The baseline of ``tracking_load.py``: a bare Flask app answering the same two URLs as nurture's tracking.

``GET /o/<token>.gif`` returns the same 1x1 GIF with the same no-cache headers, and
``GET /c/<token>?u=<url>`` redirects (302) to ``u`` with the same headers; no token
check, no Redis, nothing recorded. Run like nurture's ``wsgi:app``:
``gunicorn -w 2 --worker-class sync --pythonpath bench -b 127.0.0.1:PORT bare_gif_app:app``.
"""

import base64

from flask import Flask, Response, abort, redirect, request

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")  # as nurture.tracking_views
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache", "Expires": "0"}

app = Flask(__name__)


@app.route("/o/<token>.gif", methods=["GET", "HEAD"])
def pixel(token: str):
    return Response(PIXEL, mimetype="image/gif", headers=NO_CACHE)


@app.route("/c/<token>", methods=["GET", "HEAD"])
def click(token: str):
    url = request.args.get("u", "")
    if not url:
        abort(404)
    response = redirect(url, code=302)
    response.headers.update(NO_CACHE)
    return response
