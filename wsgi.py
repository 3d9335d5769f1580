"""The WSGI entry point: ``gunicorn wsgi:app``.

A configuration problem (unmigrated database, unsafe secret key) stops the
server with one line saying what to do, not a traceback.
"""

import sys

from nurture.app import create_app
from nurture.errors import NurtureError

try:
    app = create_app()
except NurtureError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)
