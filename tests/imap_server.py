"""A private Dovecot IMAP server for the tests (see shared RECIPES.md, section 1).

``dovecot()`` starts ``/usr/sbin/dovecot -F`` with its own config in a temporary folder
(mode 0755, so Dovecot's auth process, running as ``dovecot``, can read the passwd file;
the mail folder belongs to ``nobody``, the userdb uid) on a free loopback port, waits until
it answers LOGIN, and on exit kills the master and its children as one process group.
One user: ``test`` / ``secret``. Missing Dovecot is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Iterator

from imapclient import IMAPClient

DOVECOT = "/usr/sbin/dovecot"
USER, PASSWORD = "test", "secret"

DOVECOT_CONF = Template("""\
protocols = imap
listen = 127.0.0.1
base_dir = $dir/run
state_dir = $dir/state
instance_name = dovecot-test-$port
log_path = $dir/dovecot.log
ssl = no
disable_plaintext_auth = no
mail_location = maildir:$dir/mail/%u
passdb {
  driver = passwd-file
  args = scheme=PLAIN $dir/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$dir/mail/%u
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $port
  }
  inet_listener imaps {
    port = 0
  }
}
""")


@dataclass(frozen=True)
class ImapServer:
    host: str
    port: int
    user: str
    password: str
    directory: str

    def url(self, folder: str = "INBOX") -> str:
        return f"imap://{self.user}:{self.password}@{self.host}:{self.port}/{folder}"

    def client(self) -> IMAPClient:
        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=30)
        client.login(self.user, self.password)
        return client

    def log(self) -> str:
        path = Path(self.directory, "dovecot.log")
        return path.read_text(errors="replace") if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not open port {port} (exit code {proc.poll()})")
            time.sleep(0.01)


@contextmanager
def dovecot() -> Iterator[ImapServer]:
    if not os.path.exists(DOVECOT):
        raise RuntimeError("needs Dovecot: apt-get install dovecot-imapd (.ci/run installs it)")
    directory = tempfile.mkdtemp(prefix="nurture-dovecot-")  # not tmp_path: its 0700 parent locks Dovecot out
    os.chmod(directory, 0o755)
    os.mkdir(f"{directory}/mail")
    shutil.chown(f"{directory}/mail", "nobody", "nogroup")
    port = _free_port()
    passwd = Path(directory, "passwd")
    passwd.write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    passwd.chmod(0o644)
    Path(directory, "dovecot.conf").write_text(DOVECOT_CONF.substitute(dir=directory, port=port))
    proc = subprocess.Popen([DOVECOT, "-F", "-c", f"{directory}/dovecot.conf"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        server = ImapServer("127.0.0.1", port, USER, PASSWORD, directory)
        with server.client() as probe:  # the port opens before auth is ready; LOGIN waits for it
            probe.noop()
        yield server
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the master and all its children at once
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        shutil.rmtree(directory, ignore_errors=True)
