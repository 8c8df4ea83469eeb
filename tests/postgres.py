"""A throwaway PostgreSQL server for tests: started on a loopback port in a temp folder, as an
unprivileged user, with Chinook loaded from tests/data/chinook.sqlite; stopped at the end.

``.ci/run`` installs the server from Debian (``postgresql``); where no server binary exists the
tests that need it skip and say why.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.ports import free_port

_TYPES = {"INTEGER": "integer", "NUMERIC": "numeric", "DATETIME": "timestamp"}


def server_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    return Path(folders[-1]) if folders else None


@contextmanager
def postgres_server() -> Iterator[str]:
    """Run a server; yields the URL of its ``postgres`` database (user ``kb``, trust auth)."""
    binaries = server_bin()
    assert binaries is not None
    user = "nobody" if os.geteuid() == 0 else None  # initdb refuses to run as root
    folder = Path(tempfile.mkdtemp(prefix="kb-test-pg-"))  # not under a root-only folder
    if user:
        shutil.chown(folder, user)
    data, port = folder / "data", free_port()

    def run(*args: str) -> None:
        done = subprocess.run(
            args, capture_output=True, text=True, user=user, cwd=folder, check=False
        )
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip() or done.stdout.strip()}")

    run(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "kb", "-E", "UTF8",
        "--no-locale")  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"),
        "-w", "start")  # fmt: skip
    try:
        yield f"postgresql://kb@127.0.0.1:{port}/postgres"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


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
        # Chinook's SQLite file declares no foreign keys; declare the ones its names imply,
        # so PostgreSQL's catalogue (not inference) is what the tests read back.
        from kb_assistant.vectorstore.databases import SQLiteDatabase

        for described in SQLiteDatabase(source).describe():
            for fk in described.foreign_keys:
                pg.execute(
                    f'ALTER TABLE "{described.name}" ADD FOREIGN KEY ("{fk.column}") '
                    f'REFERENCES "{fk.ref_table}" ("{fk.ref_column}")'
                )
        pg.execute("ANALYZE")
    lite.close()
    return target
