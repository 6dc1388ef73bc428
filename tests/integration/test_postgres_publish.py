"""PostgreSQL serving against a real server: equal data, faithful types, atomic and incremental
publishes, readers never blocked or mixed, grants, and failures that say one line."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import psycopg
import pytest

from pipelines import cli
from pipelines.publish import PublishError, publish
from pipelines.publish.snapshot import LAYOUTS, PG_TYPES
from pipelines.settings import Settings
from pipelines.sync import sync
from pipelines.warehouse import SERVING_FILE, Warehouse
from tests.support.expected_postgres import analytics_relations, assert_published_equals, duck
from tests.support.postgres import free_port
from tests.support.simulators import PROJECTS, SIM_NOW, sim_settings

FIRST = (SIM_NOW - timedelta(days=61)).date()


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def states(tmp_path_factory, make_module_simulator):
    """Two serving snapshots of one source: ``old`` after a backfill, ``new`` after the source
    moved on for a day (jobs created, moved through their states and deleted) and a change capture."""
    root = tmp_path_factory.mktemp("states")
    server = make_module_simulator(jobs=3000, seed=11, days=60, projects=PROJECTS, now=SIM_NOW)
    old = root / "old"
    sync(sim_settings(server, old), mode="incremental", warehouse=Warehouse(old), refresh=True)
    new = root / "new"
    shutil.copytree(old, new)
    moved = server.state.advance(24 * 3600)
    assert moved["created"] and moved["transitioned"] and moved["deleted"]
    sync(sim_settings(server, new), mode="incremental", warehouse=Warehouse(new), refresh=True)
    server.stop()
    snapshots = {"old": old / SERVING_FILE, "new": new / SERVING_FILE}
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{snapshots['old']}' AS o (READ_ONLY)")
        con.execute(f"ATTACH '{snapshots['new']}' AS n (READ_ONLY)")
        gone = con.execute("SELECT count(*) FROM o.analytics.voice_training_jobs WHERE (project_id, job_id) NOT IN"
                           " (SELECT (project_id, job_id) FROM n.analytics.voice_training_jobs)").fetchone()[0]
    assert gone > 0  # the new snapshot lost jobs the source deleted
    return snapshots


@pytest.fixture
def database(postgres_server):
    """A fresh database on the session's server; its name."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


def pg_settings(url: str, **changes) -> Settings:
    return replace(Settings(postgres_url=url), **changes) if changes else Settings(postgres_url=url)


# ---------------------------------------------------------------------------- data and types


def test_every_analytics_relation_is_published_row_for_row(postgres_server, database, states):
    url = postgres_server.url(dbname=database)
    report = publish(states["old"], pg_settings(url))
    assert {t.mode for t in report.tables} == {"created"}
    assert "voice_training_jobs" in report.rows and report.rows["voice_training_jobs"] > 1000
    with psycopg.connect(url, options="-c TimeZone=UTC") as conn:
        assert_published_equals(conn, states["old"])

    # the next publish (a day later, deletions included) is incremental and still exact
    report = publish(states["new"], pg_settings(url))
    assert report.rows_sent < sum(report.rows.values()) / 4
    with psycopg.connect(url, options="-c TimeZone=UTC") as conn:
        assert_published_equals(conn, states["new"])


def test_columns_keep_their_types_and_tables_get_keys_and_indexes(postgres_server, database, states):
    url = postgres_server.url(dbname=database)
    publish(states["old"], pg_settings(url))
    with duck(states["old"]) as con:
        duck_types = {(t, c): d for t, c, d in con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_catalog = 's' AND table_schema = 'analytics'").fetchall()}
    with psycopg.connect(url) as conn:
        pg_types = {(t, c): d for t, c, d in conn.execute(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'analytics' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped").fetchall()}
        assert set(pg_types) == set(duck_types)
        for key, duck_type in duck_types.items():
            expected = "jsonb" if key[1] == "extra" else PG_TYPES[duck_type]
            assert pg_types[key] == {"timestamptz": "timestamp with time zone"}.get(expected, expected), key
        jobs = {c: pg_types[("voice_training_jobs", c)] for t, c in pg_types if t == "voice_training_jobs"}
        assert jobs["create_time"] == jobs["synced_at"] == "timestamp with time zone"
        assert jobs["reject_times"] == "integer" and jobs["assess_result_speed_status"] == "integer"
        assert jobs["is_remake"] == "boolean" and jobs["extra"] == "jsonb" and jobs["job_id"] == "text"
        assert pg_types[("daily_job_stats", "day")] == "date"
        assert pg_types[("daily_job_stats", "jobs_created")] == "bigint"
        assert pg_types[("daily_job_stats", "failure_rate")] == "double precision"
        assert pg_types[("job_outcomes", "waiting_on_user")] == "boolean"
        # text only where DuckDB held text
        assert all(duck_types[k] == "VARCHAR" for k, v in pg_types.items() if v == "text")
        # a jsonb column answers JSON operators
        conn.execute("SELECT count(*) FROM analytics.voice_training_jobs WHERE extra ? 'x'").fetchone()

        keys = {t: cols for t, cols in conn.execute(
            "SELECT c.conrelid::regclass::text, array_agg(a.attname ORDER BY k.ord) FROM pg_constraint c"
            " CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum"
            " WHERE c.contype = 'p' AND c.connamespace = 'analytics'::regnamespace GROUP BY 1").fetchall()}
        assert keys == {f"analytics.{name}": list(layout.primary_key)
                        for name, layout in LAYOUTS.items() if layout.primary_key}
        assert keys["analytics.voice_training_jobs"] == ["project_id", "job_id"]
        indexes = {(t, d.split(" USING btree ")[1]) for t, d in conn.execute(
            "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'analytics'").fetchall()}
        for table, columns in [("voice_training_job_history", "(project_id, job_id)"),
                               ("voice_training_job_history", "(valid_from)"),
                               ("voice_training_job_transitions", "(project_id, job_id)"),
                               ("voice_training_job_transitions", "(changed_at)"),
                               ("voice_training_jobs", "(create_time)"), ("job_outcomes", "(create_time)"),
                               ("daily_job_stats", "(day, project_id)")]:
            assert (table, columns) in indexes, (table, columns)


def test_every_layout_names_a_model_and_its_columns(states):
    """LAYOUTS keys and indexes real columns of real models (the publisher refuses otherwise)."""
    with duck(states["old"]) as con:
        columns = {}
        for t, c in con.execute("SELECT table_name, column_name FROM information_schema.columns"
                                " WHERE table_catalog = 's' AND table_schema = 'analytics'").fetchall():
            columns.setdefault(t, set()).add(c)
    for name, layout in LAYOUTS.items():
        assert name in columns, name
        for cols in (layout.primary_key, layout.group_key, *layout.indexes):
            assert set(cols) <= columns[name], (name, cols)


# ---------------------------------------------------------------------------- atomicity


def _counts(cur) -> tuple[int, int, int, int]:
    """Four numbers of one consistent state: jobs, their sum over tags, history rows, outcomes."""
    return tuple(cur.execute(
        "SELECT (SELECT count(*) FROM analytics.voice_training_jobs),"
        " (SELECT sum(total_jobs) FROM analytics.failure_rate_by_tag),"
        " (SELECT count(*) FROM analytics.voice_training_job_history),"
        " (SELECT count(*) FROM analytics.job_outcomes)").fetchone())


def _duck_counts(snapshot: Path) -> tuple[int, int, int, int]:
    with duck(snapshot) as con:
        return tuple(con.execute(
            "SELECT (SELECT count(*) FROM analytics.voice_training_jobs),"
            " (SELECT sum(total_jobs) FROM analytics.failure_rate_by_tag),"
            " (SELECT count(*) FROM analytics.voice_training_job_history),"
            " (SELECT count(*) FROM analytics.job_outcomes)").fetchone())


def test_a_reader_holding_a_transaction_keeps_the_old_tables_and_is_never_blocked(
        postgres_server, database, states):
    url = postgres_server.url(dbname=database)
    old, new = _duck_counts(states["old"]), _duck_counts(states["new"])
    assert old != new
    publish(states["old"], pg_settings(url))

    reader = psycopg.connect(url)
    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    assert reader.execute("SELECT count(*) FROM analytics.voice_training_jobs").fetchone()[0] == old[0]
    # The reader holds its transaction (and its lock on voice_training_jobs) open across the
    # publish. A publish that needed that lock would time out after 2 s and raise; it does not.
    report = publish(states["new"], pg_settings(url, postgres_lock_timeout_seconds=2))
    assert "voice_training_jobs" in report.rewritten and "failure_rate_by_tag" in report.rewritten

    assert _counts(reader) == old  # tables read before and after the commit: all the old state
    tag_rows = reader.execute("SELECT tag, total_jobs FROM analytics.failure_rate_by_tag").fetchall()
    with duck(states["old"]) as con:
        assert sorted(tag_rows, key=repr) == sorted(
            con.execute("SELECT tag, total_jobs FROM analytics.failure_rate_by_tag").fetchall(), key=repr)
    reader.execute("COMMIT")
    assert _counts(reader) == new  # its next transaction sees the new state
    reader.close()
    with psycopg.connect(url) as fresh:  # and so does a reader that connects afterwards
        assert _counts(fresh) == new


def test_queries_running_during_a_publish_see_old_or_new_never_a_mix(postgres_server, database, states):
    url = postgres_server.url(dbname=database)
    old, new = _duck_counts(states["old"]), _duck_counts(states["new"])
    publish(states["old"], pg_settings(url))
    looked, seen, errors = threading.Event(), [], []
    done = threading.Event()

    def read() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                while not done.is_set() or len(seen) < 2:
                    seen.append(_counts(conn))  # one statement: one snapshot of four tables
                    looked.set()
        except Exception as exc:  # reported by the test thread
            errors.append(exc)
            looked.set()

    thread = threading.Thread(target=read)
    thread.start()
    looked.wait()
    try:
        publish(states["new"], pg_settings(url, postgres_lock_timeout_seconds=2))
    finally:
        done.set()
        thread.join()
    assert not errors
    assert set(seen) <= {old, new} and seen[0] == old and seen[-1] == new


# ---------------------------------------------------------------------------- incremental


def _changed(old: Path, new: Path, relation: str) -> tuple[int, int, bool]:
    """(rows to send, rows to delete, whether anything changed) of ``relation`` between two
    snapshots: whole jobs for a job-level relation, the whole table for an aggregate."""
    layout = LAYOUTS.get(relation)
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{old}' AS o (READ_ONLY)")
        con.execute(f"ATTACH '{new}' AS n (READ_ONLY)")
        a, b = f"o.analytics.{relation}", f"n.analytics.{relation}"
        differ = con.execute(f"SELECT (SELECT count(*) FROM (SELECT * FROM {b} EXCEPT ALL SELECT * FROM {a}))"
                             f" + (SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b}))"
                             ).fetchone()[0] > 0
        if not (layout and layout.group_key):
            rows = con.execute(f"SELECT (SELECT count(*) FROM {b}), (SELECT count(*) FROM {a})").fetchone()
            return (rows[0], rows[1], differ) if differ else (0, 0, False)
        key = ", ".join(layout.group_key)
        con.execute(f"CREATE TEMP TABLE changed AS SELECT DISTINCT {key} FROM ("
                    f"(SELECT * FROM {b} EXCEPT ALL SELECT * FROM {a}) UNION ALL"
                    f" (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b}))")
        on = " AND ".join(f"t.{c} = c.{c}" for c in layout.group_key)
        sent = con.execute(f"SELECT count(*) FROM {b} t SEMI JOIN changed c ON {on}").fetchone()[0]
        deleted = con.execute(f"SELECT count(*) FROM {a} t SEMI JOIN changed c ON {on}").fetchone()[0]
        return sent, deleted, differ


def test_a_publish_moves_only_what_changed(postgres_server, database, states):
    url = postgres_server.url(dbname=database)
    first = publish(states["old"], pg_settings(url))
    again = publish(states["old"], pg_settings(url))
    assert again.rewritten == [] and again.rows_sent == 0
    assert set(again.unchanged) == {t.name for t in first.tables}

    report = publish(states["new"], pg_settings(url))
    by_name = {t.name: t for t in report.tables}
    for name, table in by_name.items():
        sent, deleted, differ = _changed(states["old"], states["new"], name)
        layout = LAYOUTS.get(name)
        if not differ:
            assert table.mode == "unchanged" and table.rows_sent == 0, name
        elif layout and layout.group_key:
            assert table.mode == "incremental", name
            assert (table.rows_sent, table.rows_deleted) == (sent, deleted), name
        else:
            assert table.mode == "replaced" and table.rows_sent == sent and table.rows_deleted == deleted, name
    jobs = by_name["voice_training_jobs"]
    assert 0 < jobs.rows_sent < jobs.rows / 5 and jobs.rows_deleted > 0
    assert by_name["voice_training_job_history"].rows_sent < by_name["voice_training_job_history"].rows / 5
    with psycopg.connect(url) as conn:
        rows = dict(conn.execute("SELECT relation, rows FROM analytics_publish.manifest").fetchall())
    assert rows == report.rows


def test_rows_changed_behind_its_back_or_a_new_hash_are_sent_again_without_blocking_readers(
        postgres_server, database, states):
    url = postgres_server.url(dbname=database)
    publish(states["old"], pg_settings(url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM analytics.voice_training_jobs WHERE job_id IN"
                     " (SELECT job_id FROM analytics.voice_training_jobs LIMIT 5)")
        conn.execute("UPDATE analytics_publish.manifest SET hash_algorithm = 'duckdb-hash/0.0'"
                     " WHERE relation = 'voice_training_job_history'")
    with psycopg.connect(url) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM analytics.voice_training_job_history").fetchone()
        report = publish(states["old"], pg_settings(url, postgres_lock_timeout_seconds=2))
        reader.execute("COMMIT")
    modes = {t.name: t.mode for t in report.tables}
    assert modes["voice_training_jobs"] == modes["voice_training_job_history"] == "replaced"
    assert {m for n, m in modes.items() if n not in ("voice_training_jobs", "voice_training_job_history")} == {
        "unchanged"}
    with psycopg.connect(url, options="-c TimeZone=UTC") as conn:
        assert_published_equals(conn, states["old"])
    again = publish(states["new"], pg_settings(url))  # and the next publish is incremental again
    assert {t.name: t.mode for t in again.tables}["voice_training_job_history"] == "incremental"


def test_changed_columns_replace_a_table_and_a_dropped_model_goes(postgres_server, database, states, tmp_path):
    url = postgres_server.url(dbname=database)
    publish(states["old"], pg_settings(url))
    changed = tmp_path / SERVING_FILE
    shutil.copy(states["old"], changed)
    with duckdb.connect(str(changed)) as con:
        con.execute("ALTER TABLE analytics.daily_job_stats ADD COLUMN note VARCHAR DEFAULT 'new'")
        con.execute("DROP TABLE analytics.top_failure_codes")
    report = publish(changed, pg_settings(url))
    assert {t.name: t.mode for t in report.tables}["daily_job_stats"] == "replaced"
    assert report.dropped == ["top_failure_codes"]
    with psycopg.connect(url, options="-c TimeZone=UTC") as conn:
        assert_published_equals(conn, changed)
        assert conn.execute("SELECT to_regclass('analytics.top_failure_codes')").fetchone()[0] is None


# ---------------------------------------------------------------------------- locks and grants


def test_a_table_that_must_be_replaced_waits_a_bounded_time_for_its_readers(postgres_server, database, states,
                                                                            tmp_path):
    url = postgres_server.url(dbname=database)
    first = publish(states["old"], pg_settings(url))
    changed = tmp_path / SERVING_FILE
    shutil.copy(states["new"], changed)
    with duckdb.connect(str(changed)) as con:
        con.execute("ALTER TABLE analytics.daily_job_stats ADD COLUMN note VARCHAR")

    with psycopg.connect(url) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        before = reader.execute("SELECT count(*) FROM analytics.daily_job_stats").fetchone()[0]
        pid = reader.info.backend_pid
        with pytest.raises(PublishError) as failed:
            publish(changed, pg_settings(url, postgres_lock_timeout_seconds=0.5))
        message = str(failed.value)
        assert "\n" not in message
        assert "waited 0.5 s" in message and "replacing table analytics.daily_job_stats" in message
        assert f"pid {pid}" in message and "idle in transaction" in message
        assert "nothing was changed" in message and "VOICEJOBS_POSTGRES_LOCK_TIMEOUT_SECONDS" in message
        assert reader.execute("SELECT count(*) FROM analytics.daily_job_stats").fetchone()[0] == before
        reader.execute("COMMIT")

    with psycopg.connect(url) as conn:  # the failed publish changed nothing
        assert conn.execute("SELECT DISTINCT publish_id FROM analytics_publish.manifest").fetchall() == [
            (first.publish_id,)]
        assert conn.execute("SELECT count(*) FROM analytics.voice_training_jobs").fetchone()[0] == \
            first.rows["voice_training_jobs"]
    report = publish(changed, pg_settings(url, postgres_lock_timeout_seconds=0.5))  # the reader is gone
    assert {t.name: t.mode for t in report.tables}["daily_job_stats"] == "replaced"


def test_publishes_to_one_schema_take_turns(postgres_server, database, states):
    url = postgres_server.url(dbname=database)
    with psycopg.connect(url, autocommit=True) as other:  # holds the lock as a running publish would
        other.execute("SELECT pg_advisory_lock(hashtextextended('voicejobs publish analytics', 0))")
        with pytest.raises(PublishError) as failed:
            publish(states["old"], pg_settings(url, postgres_lock_timeout_seconds=0.5))
        message = str(failed.value)
        assert "waiting for another publish to schema analytics to finish" in message
        assert f"the publish lock of schema analytics, held by pid {other.info.backend_pid}" in message
        other.execute("SELECT pg_advisory_unlock_all()")
    assert publish(states["old"], pg_settings(url, postgres_lock_timeout_seconds=0.5)).rows_sent > 0


def test_reader_roles_can_read_every_published_table_after_every_publish(postgres_server, database, states,
                                                                         tmp_path):
    url = postgres_server.url(dbname=database)
    postgres_server.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bi_reader') THEN "
                            "CREATE ROLE bi_reader LOGIN PASSWORD 'bi-reader-pw'; END IF; END $$")
    settings = pg_settings(url, postgres_readers=("bi_reader",))
    publish(states["old"], settings)
    reader_url = postgres_server.url(user="bi_reader", password="bi-reader-pw", dbname=database)

    def readable() -> set[str]:
        with psycopg.connect(reader_url) as conn:
            names = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'analytics'").fetchall()]
            for name in names:
                conn.execute(f'SELECT count(*) FROM analytics."{name}"').fetchone()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM analytics_publish.manifest")
            return set(names)

    assert readable() == set(analytics_relations(states["old"]))
    # a publish that creates a table anew (its columns changed) grants it again
    changed = tmp_path / SERVING_FILE
    shutil.copy(states["new"], changed)
    with duckdb.connect(str(changed)) as con:
        con.execute("ALTER TABLE analytics.weekly_job_stats ADD COLUMN note VARCHAR")
    report = publish(changed, settings)
    assert {t.name: t.mode for t in report.tables}["weekly_job_stats"] == "replaced"
    assert report.readers == ("bi_reader",)
    assert readable() == set(analytics_relations(changed))
    with psycopg.connect(reader_url) as conn:
        assert conn.execute("SELECT count(note) FROM analytics.weekly_job_stats").fetchone()[0] == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM analytics.weekly_job_stats")


def test_a_reader_role_that_does_not_exist_is_named(postgres_server, database, states):
    url = postgres_server.url(dbname=database)
    with pytest.raises(PublishError) as failed:
        publish(states["old"], pg_settings(url, postgres_readers=("no_such_reader",)))
    assert "no_such_reader" in str(failed.value) and "CREATE ROLE" in str(failed.value)
    with psycopg.connect(url) as conn:  # nothing was created
        assert conn.execute("SELECT to_regnamespace('analytics')").fetchone()[0] is None


# ---------------------------------------------------------------------------- failures


def _fingerprint_dir(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _no_secret_anywhere(secret: str, directory: Path, *texts: str) -> None:
    for text in texts:
        assert secret not in text
    for path in directory.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def _closed_port_url(postgres_server, database, password):
    return f"postgresql://voicejobs:{password}@127.0.0.1:{free_port()}/{database}", "cannot reach PostgreSQL at " \
        "voicejobs@127.0.0.1:"


def _wrong_password_url(postgres_server, database, password):
    postgres_server.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'publisher') THEN "
                            "CREATE ROLE publisher LOGIN PASSWORD 'the-right-one'; END IF; END $$")
    return postgres_server.url(user="publisher", password=password, dbname=database), \
        "refused the password of user publisher"


def _no_create_url(postgres_server, database, password):
    postgres_server.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'no_create') THEN "
                            "CREATE ROLE no_create LOGIN; END IF; END $$")
    postgres_server.execute(f"ALTER ROLE no_create PASSWORD '{password}'")
    return postgres_server.url(user="no_create", password=password, dbname=database), \
        f"user no_create may not create schemas in database {database}"


@pytest.mark.parametrize("case", [_closed_port_url, _wrong_password_url, _no_create_url],
                         ids=["unreachable", "wrong-password", "missing-permission"])
def test_failures_say_one_line_exit_1_and_leave_no_password_anywhere(
        case, postgres_server, database, states, tmp_path, monkeypatch, capsys, caplog):
    secret = f"pw-{uuid.uuid4().hex}"
    url, expected = case(postgres_server, database, secret)
    data_dir = tmp_path / "data"
    shutil.copytree(states["old"].parent, data_dir)
    before = _fingerprint_dir(data_dir)
    monkeypatch.setenv("VOICEJOBS_POSTGRES_URL", url)
    caplog.set_level(logging.DEBUG)

    assert cli.main(["-v", "publish", "--data-dir", str(data_dir)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("voicejobs publish: ") and expected in err, err
    assert "Traceback" not in err
    _no_secret_anywhere(secret, data_dir, out, err, caplog.text)
    assert _fingerprint_dir(data_dir) == before  # the warehouse and its snapshot untouched


def test_a_wrong_password_from_pgpassword_is_refused_and_never_shown(postgres_server, database, states,
                                                                      monkeypatch, capsys, caplog, tmp_path):
    postgres_server.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'publisher') THEN "
                            "CREATE ROLE publisher LOGIN PASSWORD 'the-right-one'; END IF; END $$")
    secret = f"pgpass-{uuid.uuid4().hex}"
    monkeypatch.setenv("PGPASSWORD", secret)
    monkeypatch.setenv("VOICEJOBS_POSTGRES_URL", f"postgresql://publisher@127.0.0.1:{postgres_server.port}/{database}")
    caplog.set_level(logging.DEBUG)
    assert cli.main(["publish", "--data-dir", str(states["old"].parent)]) == 1
    out, err = capsys.readouterr()
    assert "refused the password of user publisher" in err and len(err.strip().splitlines()) == 1
    _no_secret_anywhere(secret, tmp_path, out, err, caplog.text)


def test_publish_without_a_url_says_what_to_set(states, monkeypatch, capsys):
    monkeypatch.delenv("VOICEJOBS_POSTGRES_URL", raising=False)
    assert cli.main(["publish", "--data-dir", str(states["old"].parent)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "VOICEJOBS_POSTGRES_URL is not set" in err


def test_the_cli_publishes_and_prints_what_it_did(postgres_server, database, states, monkeypatch, capsys):
    monkeypatch.setenv("VOICEJOBS_POSTGRES_URL", postgres_server.url(dbname=database))
    assert cli.main(["publish", "--data-dir", str(states["old"].parent)]) == 0
    out = capsys.readouterr().out
    assert "published 13 tables to schema analytics at postgres@127.0.0.1:" in out
    assert postgres_server.password not in out
    assert cli.main(["publish", "--data-dir", str(states["old"].parent)]) == 0
    assert "0 rows sent, 13 tables unchanged" in capsys.readouterr().out


# ---------------------------------------------------------------------------- settings


def test_settings_hide_the_url_and_check_the_names(monkeypatch):
    from pipelines.metastudio.errors import ConfigurationError
    from pipelines.redact import redact

    secret = f"s3cret-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env({"VOICEJOBS_POSTGRES_URL": f"postgresql://u:{secret}@db:5432/analytics",
                                  "VOICEJOBS_POSTGRES_READERS": "bi_reader, metabase ,bi_reader",
                                  "VOICEJOBS_POSTGRES_SCHEMA": "bi"})
    assert secret not in repr(settings) and "postgresql://" not in repr(settings)
    assert settings.postgres_readers == ("bi_reader", "metabase") and settings.postgres_schema == "bi"
    assert redact(f"oops {secret} oops") == "oops *** oops"
    for env, words in [({"VOICEJOBS_POSTGRES_SCHEMA": "Analytics; drop"}, "VOICEJOBS_POSTGRES_SCHEMA"),
                       ({"VOICEJOBS_POSTGRES_READERS": "bi reader"}, "VOICEJOBS_POSTGRES_READERS"),
                       ({"VOICEJOBS_POSTGRES_URL": f"garbage {secret}"}, "not a PostgreSQL connection URL")]:
        with pytest.raises(ConfigurationError) as err:
            Settings.from_env(env)
        assert words in str(err.value) and secret not in str(err.value)


def test_snapshot_types_without_a_mapping_stop_the_publish(tmp_path, postgres_server, database):
    path = tmp_path / "odd.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA analytics")
        con.execute("CREATE TABLE analytics.odd AS SELECT [1, 2] AS numbers, DATE '2025-01-01' AS day")
    with pytest.raises(PublishError) as err:
        publish(path, pg_settings(postgres_server.url(dbname=database)))
    assert "column numbers of analytics.odd has type INTEGER[]" in str(err.value)


def test_a_missing_snapshot_is_named(tmp_path, postgres_server, database):
    with pytest.raises(PublishError, match="no serving snapshot at"):
        publish(tmp_path / "nothing.duckdb", pg_settings(postgres_server.url(dbname=database)))


def test_dates_and_times_survive_at_their_edges(tmp_path, postgres_server, database):
    path = tmp_path / "edges.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("CREATE SCHEMA analytics")
        con.execute("CREATE TABLE analytics.edges AS SELECT * FROM (VALUES"
                    " (1, TIMESTAMPTZ '2025-01-01 00:00:00.123456+00', DATE '2025-02-28', 0.1::DOUBLE, '', true,"
                    "  '{\"a\": [1, \"\\u00e9\"]}'),"
                    " (2, NULL, NULL, 1e-300::DOUBLE, NULL, NULL, NULL),"
                    " (3, TIMESTAMPTZ '1970-01-01 00:00:00+00', DATE '2000-01-01', -0.0::DOUBLE, 'a,\"b\"\n', false,"
                    "  '{}'))"
                    " AS t(id, seen_at, day, x, label, flag, extra)")
    url = postgres_server.url(dbname=database)
    publish(path, pg_settings(url))
    with psycopg.connect(url, options="-c TimeZone=UTC") as conn:
        rows = conn.execute("SELECT id, seen_at, day, x, label, flag, extra FROM analytics.edges ORDER BY id").fetchall()
    assert rows[0] == (1, datetime(2025, 1, 1, 0, 0, 0, 123456, tzinfo=UTC), date(2025, 2, 28), 0.1, "", True,
                       {"a": [1, "é"]})
    assert rows[1] == (2, None, None, 1e-300, None, None, None)
    assert rows[2][4] == 'a,"b"\n' and rows[2][6] == {}
