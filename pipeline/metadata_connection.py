"""The run metadata (MLMD) every command reads and `masktfx run` writes: the workdir's SQLite file
(the default), or a MySQL / MariaDB database that several people, jobs and hosts share, as TFX's
Kubeflow runner and KFP keep theirs. The password comes from the environment only
(MASKTFX_METADATA_PASSWORD, or the file MASKTFX_METADATA_PASSWORD_FILE names)."""

from __future__ import annotations

import os

from ml_metadata import errors
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from masktfx.config import PipelineConfig
from masktfx.config_values import (
    METADATA_PASSWORD_ENV,
    METADATA_PASSWORD_FILE_ENV,
    metadata_password,
)

# Seconds a MySQL connection attempt may take before the run or the command gives up.
CONNECT_TIMEOUT_S = 10


def connection_config(config: PipelineConfig, readonly: bool = False
                      ) -> metadata_store_pb2.ConnectionConfig:
    """MLMD's connection to the config's run metadata; `readonly` for commands that only read
    (an SQLite file opened read-only; a MySQL database that must exist already)."""
    location = config.metadata_location
    connection = metadata_store_pb2.ConnectionConfig()
    if location.kind == "sqlite":
        connection.sqlite.filename_uri = location.path
        connection.sqlite.connection_mode = (
            metadata_store_pb2.SqliteMetadataSourceConfig.READONLY if readonly else
            metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
        return connection
    connection.mysql.host = location.host
    connection.mysql.port = location.port
    connection.mysql.database = location.database
    connection.mysql.user = location.user
    connection.mysql.password = metadata_password()
    connection.mysql.skip_db_creation = readonly
    return connection


def store_exists(config: PipelineConfig) -> bool:
    """Whether a run may have recorded anything yet (a MySQL database is asked)."""
    if config.metadata_location.kind == "sqlite":
        return os.path.exists(config.metadata_path)
    return True


def open_store(config: PipelineConfig, readonly: bool = True) -> metadata_store.MetadataStore:
    """The config's MLMD store (read-only by default: reports never change what a run
    recorded); LookupError, naming the store, when there is none or it cannot be reached."""
    location = config.metadata_location
    if not store_exists(config):
        raise LookupError(f"{location.describe()}: no metadata store here; run `masktfx run` "
                          "with this --workdir first")
    try:
        return metadata_store.MetadataStore(connection_config(config, readonly))
    except (errors.StatusError, RuntimeError) as exc:
        raise LookupError(unreachable(config, exc)) from None


def unreachable(config: PipelineConfig, exc: BaseException) -> str:
    """What to say when the metadata store cannot be used."""
    location = config.metadata_location
    hint = "" if location.kind == "sqlite" else (
        f" (is the server up and the password in {METADATA_PASSWORD_ENV} or "
        f"{METADATA_PASSWORD_FILE_ENV}?)")
    return f"cannot use the run metadata at {location.describe()}: {exc}{hint}"
