"""A throwaway PostgreSQL cluster for tests and benchmarks (Debian's ``postgresql`` binaries).

Real PostgreSQL, not a mock: ``initdb`` a cluster in a temp dir, start it with ``pg_ctl`` on a
free loopback port with password (SCRAM) authentication, hand out fresh databases, and throw
everything away on :meth:`PgCluster.stop`. ``initdb`` refuses to run as root, so when we are
root the cluster runs as the ``postgres`` system user (created by the Debian package).

    with PgCluster() as pg:
        url = pg.new_database("t1")   # postgresql+psycopg://evo:...@127.0.0.1:PORT/t1
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

CONNECTIONS_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
)
USER = "evo"
PASSWORD = "evo-test-secret"


class PgUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed (``apt-get install postgresql``)."""


def find_bindir() -> Path:
    """Newest ``/usr/lib/postgresql/*/bin`` holding ``initdb`` and ``pg_ctl``."""
    env = os.environ.get("EVO_FPN_PG_BINDIR")
    candidates = [env] if env else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name.split(".")[0]), reverse=True
    )
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    which = shutil.which("initdb")
    if which and shutil.which("pg_ctl"):
        return Path(which).parent
    raise PgUnavailable("PostgreSQL server binaries not found: run `apt-get install -y postgresql`")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """A private PostgreSQL server on ``127.0.0.1:port`` that lives in a temp dir."""

    def __init__(self, *, user: str = USER, password: str = PASSWORD, max_connections: int = 200) -> None:
        if not user.isidentifier() or not password or "'" in password:
            raise ValueError("user must be an identifier and password non-empty without quotes")
        if max_connections < 10:
            raise ValueError("max_connections must be >= 10")
        self.user = user
        self.password = password
        self.max_connections = max_connections
        self.port = 0
        self.root: Path | None = None
        self._run_as: str | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> PgCluster:
        bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="evo-fpn-pg-"))
        data, sock, pwfile = self.root / "data", self.root / "sock", self.root / "pwfile"
        sock.mkdir()
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailable("running as root and no 'postgres' user exists to own the cluster") from None
            self._run_as = "postgres"
            for p in (self.root, sock, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self._pg(
            [str(bindir / "initdb"), "-D", str(data), "-U", self.user, "--pwfile", str(pwfile)]
            + ["--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions"],
        )
        for _attempt in range(5):
            self.port = free_port()
            opts = (
                f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off -c max_connections={self.max_connections}"
            )
            try:
                self._pg(
                    [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(self.root / "log"), "-w"]
                    + ["-t", "30", "start"]
                )
                break
            except RuntimeError:
                if _attempt == 4:
                    raise
                time.sleep(0.2)
        self._bindir = bindir
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            self._pg([str(self._bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"])
        except (RuntimeError, AttributeError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def restart(self) -> None:
        """``pg_ctl restart`` (fast mode: every client connection is terminated), same port."""
        assert self.root is not None, "start the cluster first"
        # -l: the new server must not inherit our pipes (we would wait for them to close for ever).
        data, log = str(self.root / "data"), str(self.root / "log")
        self._pg([str(self._bindir / "pg_ctl"), "-D", data, "-l", log, "-m", "fast", "-w", "-t", "60", "restart"])

    def connections(self) -> int:
        """Client connections open now (this query's own excluded)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname="postgres", autocommit=True
        ) as conn:
            row = conn.execute(CONNECTIONS_SQL).fetchone()
        return int(row[0]) if row else 0

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases ----------------------------------------------------------------------
    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql+psycopg://{self.user}:{pw}@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """Create an empty database and return its URL (with the password)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name must be alphanumeric/underscore, got {name!r}")
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    # -- helpers ------------------------------------------------------------------------
    def _pg(self, argv: list[str]) -> None:
        if self._run_as:
            argv = ["runuser", "-u", self._run_as, "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=self.root)
        if proc.returncode != 0:
            log = ""
            if self.root and (self.root / "log").exists():
                log = (self.root / "log").read_text()[-2000:]
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]} {log}")
