"""A real PostgreSQL server for the tests (registered from conftest.py as a pytest plugin).

Which server: the one `scripts/postgres.sh run …` started (`make test` and `.ci/run` do), named by
RLHF_WIDGETS_TEST_PG_URL (+ RLHF_WIDGETS_TEST_PG_DATA / _BIN, so a test can restart it); otherwise one
this test session starts itself with `scripts/postgres.sh start` from installed binaries (never
installing anything); otherwise the tests that need one are skipped, saying why.

Every test gets its own schema (`pg_url`), so pair and label ids start at 1 as in a new SQLite file.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "postgres.sh"


@dataclass
class PostgresServer:
    """A running server: its URL (a superuser, trust authentication on loopback) and, when the tests may
    restart it, its data directory and binaries."""

    url: str
    data_dir: Path | None
    bin_dir: Path | None

    def _pg_ctl(self, *args: str) -> None:
        if self.data_dir is None or self.bin_dir is None:
            pytest.skip("the PostgreSQL server in RLHF_WIDGETS_TEST_PG_URL can't be restarted by the tests "
                        "(set RLHF_WIDGETS_TEST_PG_DATA and RLHF_WIDGETS_TEST_PG_BIN, as scripts/postgres.sh run does)")
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", *args]
        if os.geteuid() == 0:  # the server refuses to run as root: act as the data directory's owner
            command = ["runuser", "-u", self.data_dir.owner(), "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        """Stop the server now (fast shutdown: open connections are cut, as in a crash of the link)."""
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        """Start it again on the same port and socket directory (scripts/postgres.sh's layout)."""
        port = self.url.rsplit(":", 1)[1].split("/", 1)[0]
        cluster = self.data_dir.parent if self.data_dir else None
        self._pg_ctl("-l", str(cluster / "server.log") if cluster else "/dev/null",
                     "-o", f"-p {port} -k {cluster} -c listen_addresses=127.0.0.1", "start")

    def schema_url(self, schema: str) -> str:
        """The URL of a store kept in `schema` (which must exist)."""
        return f"{self.url}?options={quote(f'-csearch_path={schema}')}"

    def execute(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Run one statement as the superuser; its rows."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(statement, params or None)
            return cursor.fetchall() if cursor.description else []


def _server_from_script(state: Path) -> tuple[PostgresServer | None, str]:
    """Start a server with scripts/postgres.sh (installed binaries only); (server, why not)."""
    env = {**os.environ, "RLHF_WIDGETS_PG_STATE": str(state), "RLHF_WIDGETS_PG_NO_INSTALL": "1"}
    try:
        done = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"scripts/postgres.sh start failed: {error}"
    if done.returncode != 0:
        return None, f"no PostgreSQL server could be started: {done.stderr.strip().splitlines()[-1:]}"
    cluster, _port, bin_dir = state.read_text().split()
    return PostgresServer(done.stdout.strip().splitlines()[-1], Path(cluster) / "data", Path(bin_dir)), ""


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (see the module docstring); skips the test if there is none."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[dev]')")
    url = os.environ.get("RLHF_WIDGETS_TEST_PG_URL")
    if url:
        data, binaries = os.environ.get("RLHF_WIDGETS_TEST_PG_DATA"), os.environ.get("RLHF_WIDGETS_TEST_PG_BIN")
        yield PostgresServer(url, Path(data) if data else None, Path(binaries) if binaries else None)
        return
    state = tmp_path_factory.mktemp("postgres") / "state"
    server, why = _server_from_script(state)
    if server is None:
        pytest.skip(f"{why} (run the tests through `make test` or `scripts/postgres.sh run`)")
    try:
        yield server
    finally:
        env = {**os.environ, "RLHF_WIDGETS_PG_STATE": str(state)}
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def pg_schema(postgres_server: PostgresServer) -> Iterator[Callable[[], str]]:
    """A factory of fresh stores: each call makes a new schema and returns its URL; all are dropped after."""
    made: list[str] = []

    def new() -> str:
        name = f"t_{secrets.token_hex(6)}"
        postgres_server.execute(f"CREATE SCHEMA {name}")
        made.append(name)
        return postgres_server.schema_url(name)

    yield new
    if made:
        postgres_server.execute(f"DROP SCHEMA {', '.join(made)} CASCADE")


@pytest.fixture
def pg_url(pg_schema: Callable[[], str]) -> str:
    """The URL of an empty store of its own (a fresh schema) on the session's server."""
    return pg_schema()
