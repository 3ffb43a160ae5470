"""The PostgreSQL server the tests use, and a schema of its own for each test.

The server is ``JOBQ_TEST_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``);
when it does not answer, the tests that need it are skipped, except under ``CI``,
where they fail. A plugin (the root ``conftest.py`` loads it): its fixtures ``server``
and ``db`` serve every test module, and it imports psycopg only when they are used.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import psycopg

DSN = os.environ.get("JOBQ_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Database:
    """A schema of its own on the test server."""

    dsn: str
    schema: str

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        import psycopg

        return psycopg.connect(
            self.dsn, autocommit=autocommit, options=f"-c search_path={self.schema}"
        )

    @property
    def queue_dsn(self) -> str:
        """The dsn a ``JobQueue`` is given: the server, with this schema first in the path."""
        options = urllib.parse.quote(f"-csearch_path={self.schema}")
        separator = "&" if "?" in self.dsn else "?"
        # Named after the schema, so that a test can cut off its own connections only.
        return f"{self.dsn}{separator}options={options}&application_name={self.schema}"


def answering_server() -> str:
    """The test server's dsn; skips the test (fails it under CI) when it does not answer."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - only where psycopg is missing
        if os.environ.get("CI"):
            raise
        pytest.skip("psycopg is not installed: pip install 'psycopg[binary]'")
    try:
        with psycopg.connect(DSN, connect_timeout=5):
            pass
    except psycopg.OperationalError as error:
        message = (
            f"PostgreSQL does not answer at {DSN} ({error}). Start one, for example"
            " `pg_ctlcluster 15 main start`, or `docker run -d -p 5432:5432"
            " -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test postgres:15`,"
            " or point JOBQ_TEST_DSN at one"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return DSN


@pytest.fixture(scope="session")
def server() -> str:
    return answering_server()


def new_schema(server: str) -> Database:
    import psycopg
    from psycopg import sql

    schema = f"jobq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return Database(server, schema)


def drop_schema(db: Database) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(db.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(db.schema)))


@pytest.fixture
def db(server: str) -> Iterator[Database]:
    database = new_schema(server)
    try:
        yield database
    finally:
        drop_schema(database)
