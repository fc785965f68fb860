"""The metadata database: WAL, versioned migrations, refusal of newer schemas."""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from agent.db import MIGRATIONS, MetadataDB, SchemaTooNew, database_path, open_database


def test_fresh_database_is_migrated_to_the_latest_version(tmp_path):
    db = MetadataDB(str(tmp_path / "metadata.db"))
    try:
        assert db.schema_version == len(MIGRATIONS)
        mode = db.execute("PRAGMA journal_mode")[0][0]
        assert mode == "wal"
        history = [r["version"] for r in db.execute("SELECT version FROM schema_history")]
        assert history == list(range(1, len(MIGRATIONS) + 1))
    finally:
        db.close()


def test_reopening_keeps_data_and_runs_only_new_migrations(tmp_path):
    path = str(tmp_path / "metadata.db")
    db = MetadataDB(path)
    db.set_info("first_start_version", "0.1.0")
    db.close()
    extended = [*MIGRATIONS, "CREATE TABLE extra (id INTEGER PRIMARY KEY);"]
    db = MetadataDB(path, migrations=extended)
    try:
        assert db.schema_version == len(extended)
        assert db.get_info("first_start_version") == "0.1.0"
        db.execute("INSERT INTO extra (id) VALUES (1)")
    finally:
        db.close()


def test_a_failing_migration_leaves_the_previous_version_intact(tmp_path):
    path = str(tmp_path / "metadata.db")
    MetadataDB(path).close()
    broken = [*MIGRATIONS, "CREATE TABLE half (id INTEGER);\nTHIS IS NOT SQL;"]
    with pytest.raises(sqlite3.OperationalError):
        MetadataDB(path, migrations=broken)
    db = MetadataDB(path)
    try:
        assert db.schema_version == len(MIGRATIONS)
        tables = {r["name"] for r in db.execute("SELECT name FROM sqlite_master")}
        assert "half" not in tables  # the migration's first statement was rolled back too
    finally:
        db.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "metadata.db")
    MetadataDB(path, migrations=[*MIGRATIONS, "CREATE TABLE future (x);"]).close()
    with pytest.raises(SchemaTooNew, match="upgrade model-agent"):
        MetadataDB(path)


def test_transaction_rolls_back_on_error(tmp_path):
    db = MetadataDB(str(tmp_path / "metadata.db"))
    try:
        with pytest.raises(RuntimeError), db.transaction() as conn:
            conn.execute("INSERT INTO agent_info (key, value) VALUES ('a', 'b')")
            raise RuntimeError("boom")
        assert db.get_info("a") is None
    finally:
        db.close()


def test_gpu_holders_and_dra_devices_round_trip(tmp_path):
    from agent.db import DraPreparedDevice

    db = MetadataDB(str(tmp_path / "m.db"))
    try:
        device = DraPreparedDevice(
            claim_uid="u1",
            claim_namespace="ns",
            claim_name="gpu-claim",
            driver="gpu.model-agent.io",
            pool="node-a",
            device="gpu-1",
            request="gpu",
            cdi_device="k8s.gpu.model-agent.io/claim=u1-gpu-1",
            device_uuid="GPU-2222",
            admin_access=False,
            prepared_at=1,
        )
        db.put_dra_claim("u1", [device])
        db.put_dra_claim("u1", [device])  # replaces, never duplicates
        assert db.dra_devices() == [device]
        db.delete_dra_claim("u1")
        assert db.dra_devices() == []
        assert db.gpu_holders() == []
    finally:
        db.close()


def test_scrape_time_answers_are_asked_again_only_after_a_commit(tmp_path):
    """gpu_holders/dra_devices are read every scrape; a commit, here or by another
    connection, is what makes them ask SQLite again."""
    from agent.db import DraPreparedDevice

    path = str(tmp_path / "m.db")
    db = MetadataDB(path)
    queries: list[str] = []
    db._conn.set_trace_callback(queries.append)
    device = DraPreparedDevice(
        "u1",
        "ns",
        "claim",
        "gpu.model-agent.io",
        "node",
        "gpu-0",
        "gpu",
        "cdi/x=0",
        "GPU-1",
        False,
        1,
    )
    try:
        assert db.dra_devices() == [] and db.dra_devices() == []
        assert sum("FROM dra_prepared_devices" in q for q in queries) == 1  # then remembered
        db.put_dra_claim("u1", [device])
        assert db.dra_devices() == [device]
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("DELETE FROM dra_prepared_devices")
        other.close()
        assert db.dra_devices() == []  # another connection's commit is seen too
        assert db.gpu_holders() == [] and db.gpu_holders() == []
        assert sum("FROM dra_prepared_devices ORDER" in q for q in queries) == 3
        assert sum("FROM gpu_assignments" in q for q in queries) == 1
        db.put_dra_claim("u1", [device])
        assert db.dra_devices() == [device]
        with pytest.raises(RuntimeError), db.transaction() as conn:  # read, then rolled back
            conn.execute("DELETE FROM dra_prepared_devices")
            assert db.dra_devices() == []
            raise RuntimeError("roll back")
        assert db.dra_devices() == [device]  # not the rolled-back answer
    finally:
        db.close()


def test_the_database_and_its_wal_are_owner_only(tmp_path):
    """It holds container environments, which carry secrets."""
    path = tmp_path / "metadata.db"
    path.write_bytes(b"")
    path.chmod(0o644)  # as an older agent left it
    db = MetadataDB(str(path))
    try:
        db.set_info("k", "v")
        for name in ("metadata.db", "metadata.db-wal", "metadata.db-shm"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        db.close()


def test_the_database_lives_in_an_owner_only_directory(tmp_path):
    """The root dir is 0711 (user-namespaced containers traverse it); the database's is 0700."""
    db = open_database(str(tmp_path))
    try:
        assert db.path == database_path(str(tmp_path)) == str(tmp_path / "db" / "metadata.db")
        assert (tmp_path / "db").stat().st_mode & 0o777 == 0o700
    finally:
        db.close()


def test_a_database_an_older_agent_left_in_the_root_dir_is_moved_with_its_wal(tmp_path):
    legacy = MetadataDB(str(tmp_path / "metadata.db"))
    legacy.set_info("written_by", "an older agent")
    # Copy the files while the connection is open: the commit is in the WAL only.
    copies = tmp_path / "crashed"
    copies.mkdir()
    for name in ("metadata.db", "metadata.db-wal"):
        shutil.copy(tmp_path / name, copies / name)
    legacy.close()
    db = open_database(str(copies))
    try:
        assert db.get_info("written_by") == "an older agent"
        assert (copies / "db" / "metadata.db").is_file()
        assert (copies / "metadata.db").is_symlink()  # the old name, now a link to it
        assert not (copies / "metadata.db-wal").exists()
    finally:
        db.close()
    again = open_database(str(copies))  # a second start finds it where it now is
    try:
        assert again.get_info("written_by") == "an older agent"
    finally:
        again.close()


def test_the_wal_and_shm_an_older_agent_left_are_owner_only_once_moved(tmp_path):
    """SQLite keeps an existing -wal/-shm's mode: a 0644 WAL would show its commits."""
    legacy = MetadataDB(str(tmp_path / "metadata.db"))
    legacy.set_info("written_by", "an older agent")
    copies = tmp_path / "crashed"
    copies.mkdir()
    for name in ("metadata.db", "metadata.db-wal", "metadata.db-shm"):
        shutil.copy(tmp_path / name, copies / name)
        (copies / name).chmod(0o644)  # as an older agent's umask left them
    legacy.close()
    db = open_database(str(copies))
    try:
        assert db.get_info("written_by") == "an older agent"
        for name in ("metadata.db", "metadata.db-wal", "metadata.db-shm"):
            assert (copies / "db" / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        db.close()


def test_an_older_agent_opens_the_moved_database_through_the_old_name(tmp_path):
    """A rollback must not find an empty database at the old path (its recovery would
    then throw away every layer no record names)."""
    db = open_database(str(tmp_path))
    db.set_info("written_by", "this agent")
    db.close()
    legacy = tmp_path / "metadata.db"
    assert legacy.is_symlink() and os.readlink(legacy) == "db/metadata.db"
    older = MetadataDB(str(legacy))  # what an agent before the move opens
    try:
        assert older.get_info("written_by") == "this agent"
        older.set_info("written_by", "the older agent")
        assert not (tmp_path / "metadata.db-wal").exists()  # SQLite follows the link
        assert (tmp_path / "db" / "metadata.db-wal").exists()
    finally:
        older.close()
    again = open_database(str(tmp_path))
    try:
        assert again.get_info("written_by") == "the older agent"
    finally:
        again.close()
