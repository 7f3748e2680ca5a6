"""The PostgreSQL server of the tests: `CALLREC_TEST_PG_URL`, or the cluster `make pg` starts.

A test run makes its own database (dropped at the end) and gives every test a schema of its
own in it (`ledger_url`), so tests neither see nor wait for each other's rows.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

DEFAULT_URL = "postgresql://callrec_test:callrec_test@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get("CALLREC_TEST_PG_URL") or DEFAULT_URL


def reachable(url: str) -> str | None:
    """Why the server at `url` cannot be used, or None."""
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True):
            return None
    except psycopg.Error as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return f"no PostgreSQL for the tests at {url.split('@')[-1]} ({first}): run `make pg`"


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def with_schema(url: str, schema: str) -> str:
    """`url` whose sessions use `schema` first (its tables, its advisory lock)."""
    parts = urlsplit(url)
    option = quote(f"-csearch_path={schema}")
    query = f"{parts.query}&options={option}" if parts.query else f"options={option}"
    return urlunsplit(parts._replace(query=query))


@contextmanager
def database(url: str) -> Iterator[str]:
    """A new database on the server at `url` for this run; dropped afterwards."""
    name = f"callrec_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(url, name)
    finally:
        _drop_database(url, name)


def _drop_database(url: str, name: str, attempts: int = 20) -> None:
    """Drop `name`, waiting out an autovacuum worker on it: FORCE ends the run's own
    sessions, but a worker of no role is one the test role may not terminate."""
    for attempt in range(attempts):
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


@contextmanager
def schema(url: str) -> Iterator[str]:
    """A new schema in the database at `url`; its URL, dropped with everything in it after."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield with_schema(url, name)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def ensure_schema(url: str, name: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
