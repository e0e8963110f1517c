"""One `masktfx run` at a time per workdir, and per pipeline name in a shared metadata database.

Two runs on one workdir would ingest into the same span at once and share one MLMD store: the
first would end with the second's run id, components it never ran, and a summary that is not
its own. A run holds an exclusive lock (flock) on WORKDIR/run.lock from before it ingests until
its summary is read; the file says who holds it, so a second run is refused with a message that
names the first. The kernel drops the lock when its process ends, however it ends, so a killed
run leaves no stale lock behind. (flock is per host: workdirs on a network filesystem shared
by several hosts are not covered.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from masktfx.config import PipelineConfig
from masktfx.config_values import (
    METADATA_PASSWORD_ENV,
    METADATA_PASSWORD_FILE_ENV,
    metadata_password,
)

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """Another run holds the workdir; the message names it."""


def _holder(handle) -> str:
    handle.seek(0)
    return _describe(handle.read())


def _describe(text: str) -> str:
    """A holder's JSON record as words."""
    try:
        found = json.loads(text or "{}")
    except ValueError:
        found = {}
    if not found:
        return "another masktfx run"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found.get("started", 0)))
    return (f"run {found.get('run_id', '?')} (pid {found.get('pid', '?')} on "
            f"{found.get('host', '?')}, started {started})")


@contextmanager
def workdir_lock(workdir: str, run_id: str) -> Iterator[None]:
    """Hold WORKDIR's run lock for the block, or raise RunLockedError at once."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    # opened without truncating: the holder's record stays readable until the lock is ours
    with open(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{_holder(handle)} is running in {workdir}; wait for it to finish, or run in "
                "another --workdir") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"run_id": run_id, "pid": os.getpid(),
                                     "host": socket.gethostname(), "started": time.time()}))
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


# The table beside MLMD's in a shared database that says who holds each pipeline's run lock.
HOLDERS_TABLE = "masktfx_run_lock_holders"


@contextmanager
def database_lock(config: PipelineConfig, run_id: str) -> Iterator[None]:
    """With run metadata in MySQL / MariaDB: one run of the pipeline (by name) at a time in that
    database, from any host, or RunLockedError at once naming the holder. A named lock
    (GET_LOCK) held by this process's own connection: the server drops it when the connection
    ends, however the run ends. Nothing to hold with SQLite (the workdir's lock covers it)."""
    location = config.metadata_location
    if location.kind != "mysql":
        yield
        return
    import pymysql

    try:
        connection = pymysql.connect(
            host=location.host, port=location.port, user=location.user,
            password=metadata_password(), autocommit=True,
            connect_timeout=10)
    except pymysql.MySQLError as exc:
        raise MetadataUnavailableError(
            f"cannot reach the run metadata at {location.describe()} to lock the pipeline: "
            f"{exc.args[-1] if exc.args else exc} (is the server up and the password in "
            f"{METADATA_PASSWORD_ENV} or {METADATA_PASSWORD_FILE_ENV}?)") from None
    name = f"masktfx run {location.database}/{config.pipeline_name}"[:64]
    record = json.dumps({"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                         "started": time.time()})
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{location.database}`")
            cursor.execute(f"CREATE TABLE IF NOT EXISTS `{location.database}`.{HOLDERS_TABLE} "
                           "(name VARCHAR(64) PRIMARY KEY, holder TEXT)")
            cursor.execute("SELECT GET_LOCK(%s, 0)", (name,))
            if cursor.fetchone()[0] != 1:
                cursor.execute(f"SELECT holder FROM `{location.database}`.{HOLDERS_TABLE} "
                               "WHERE name = %s", (name,))
                found = cursor.fetchone()
                raise RunLockedError(
                    f"{_describe(found[0] if found else '')} is running pipeline "
                    f"{config.pipeline_name!r} against {location.describe()}; wait for it to "
                    "finish, or use another pipeline_name")
            cursor.execute(f"REPLACE INTO `{location.database}`.{HOLDERS_TABLE} VALUES (%s, %s)",
                           (name, record))
        yield
    finally:
        connection.close()  # the server releases the named lock with the connection


class MetadataUnavailableError(RuntimeError):
    """The run metadata's database cannot be reached; the message names it."""
