"""A throwaway PostgreSQL server for tests: started on a loopback port in a temp folder, as an
unprivileged user, with Chinook loaded from the shared SQLite file; stopped at the end.

``.ci/run`` installs the server from Debian (``postgresql``); where no server binary exists the
tests that need it skip and say why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TYPES = {"INTEGER": "integer", "NUMERIC": "numeric", "DATETIME": "timestamp"}


def server_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    return Path(folders[-1]) if folders else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server(folder: Path) -> Iterator[str]:
    """Run a server; yields the URL of its ``postgres`` database (user ``kb``, trust auth)."""
    binaries = server_bin()
    assert binaries is not None
    user = "nobody" if os.geteuid() == 0 else None  # initdb refuses to run as root
    folder.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(folder, user)
    data, port = folder / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, user=user, cwd=folder)

    run(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "kb", "-E", "UTF8",
        "--no-locale")  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"),
        "-w", "start")  # fmt: skip
    try:
        yield f"postgresql://kb@127.0.0.1:{port}/postgres"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")


def load_sqlite(source: Path, url: str, database: str) -> str:
    """Copy every table of a SQLite file, keys included, into a new database; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    target = url.rsplit("/", 1)[0] + f"/{database}"
    lite = sqlite3.connect(source)
    tables = [r[0] for r in lite.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )]  # fmt: skip
    with psycopg.connect(target) as pg:
        for table in tables:
            info = lite.execute(f'PRAGMA table_info("{table}")').fetchall()
            columns = ", ".join(
                f'"{c[1]}" {_TYPES.get(str(c[2]).split("(")[0].upper(), "text")}' for c in info
            )
            keys = ", ".join(f'"{c[1]}"' for c in sorted(info, key=lambda c: c[5]) if c[5])
            pg.execute(f'CREATE TABLE "{table}" ({columns}, PRIMARY KEY ({keys}))')
            with pg.cursor().copy(f'COPY "{table}" FROM STDIN') as copy:
                for row in lite.execute(f'SELECT * FROM "{table}"'):
                    copy.write_row(row)
        for table in tables:
            for fk in lite.execute(f'PRAGMA foreign_key_list("{table}")').fetchall():
                pg.execute(
                    f'ALTER TABLE "{table}" ADD FOREIGN KEY ("{fk[3]}") REFERENCES "{fk[2]}" '
                    f'("{fk[4]}")'
                )
        pg.execute("ANALYZE")
    lite.close()
    return target
