-- The first schema of warehouse.duckdb. Every statement is idempotent.
--
-- The placeholder job_columns in braces, below, is not SQL: the migration runner
-- (pipelines/warehouse/db.py) replaces it with the job columns of JOBS_SCHEMA
-- (pipelines/ingest/schema.py), the one place they are defined, so the jobs table, its history and
-- the Arrow batches the sync writes cannot drift apart.

-- One row per job, its newest version; deleted_at set when the source stopped listing it.
CREATE TABLE IF NOT EXISTS voice_training_jobs (
    {job_columns},
    deleted_at TIMESTAMPTZ
);

-- SCD type 2: one row per version of a job as the sync saw it.
CREATE TABLE IF NOT EXISTS voice_training_job_history (
    {job_columns},
    valid_from TIMESTAMPTZ, valid_to TIMESTAMPTZ, observed_at TIMESTAMPTZ,
    deleted_at TIMESTAMPTZ, row_hash VARCHAR
);

-- One row per change of state, the first observation included (from_state NULL).
CREATE OR REPLACE VIEW voice_training_job_transitions AS
SELECT project_id, job_id, from_state, state AS to_state, valid_from AS changed_at
FROM (
    SELECT project_id, job_id, state, valid_from,
           lag(state) OVER (PARTITION BY project_id, job_id ORDER BY valid_from, observed_at) AS from_state
    FROM voice_training_job_history
)
WHERE from_state IS DISTINCT FROM state;

-- One listing window a run fetched: what the API counted and what the sync got.
CREATE TABLE IF NOT EXISTS sync_windows (run_id VARCHAR, project_id VARCHAR, kind VARCHAR,
    since TIMESTAMPTZ, until TIMESTAMPTZ, api_count BIGINT, fetched BIGINT, pages INTEGER,
    synced_at TIMESTAMPTZ);

-- One sync run: 'running' until it records its end, then 'succeeded', 'failed' or 'abandoned'.
CREATE TABLE IF NOT EXISTS sync_runs (run_id VARCHAR, started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ, status VARCHAR, mode VARCHAR, rows BIGINT, requests BIGINT,
    retries BIGINT, quarantined BIGINT, details VARCHAR, stats VARCHAR);

-- The change-capture watermark of each project.
CREATE TABLE IF NOT EXISTS sync_state (project_id VARCHAR, watermark TIMESTAMPTZ, updated_at TIMESTAMPTZ);

-- Records the sync could not read, kept raw for inspection.
CREATE TABLE IF NOT EXISTS quarantine (run_id VARCHAR, project_id VARCHAR, job_id VARCHAR,
    reason VARCHAR, raw_record VARCHAR, quarantined_at TIMESTAMPTZ);

-- Lake partitions whose file does not equal the table yet (written after the commit).
CREATE TABLE IF NOT EXISTS lake_dirty (project_id VARCHAR, create_day DATE);

CREATE SCHEMA IF NOT EXISTS analytics;
