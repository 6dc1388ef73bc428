-- The hash of every job's key (project_id, job_id), one row per voice_training_jobs row, written
-- in the transaction that appends the job. A batch of jobs the table has never seen (most of a
-- backfill) is checked against these 8 bytes a job instead of every stored key's strings. The
-- hash is DuckDB's hash(), which a DuckDB release may change: the program fills and re-hashes
-- this table when warehouse_meta says another release (or nothing) made its rows.
CREATE TABLE IF NOT EXISTS job_keys (key_hash UBIGINT NOT NULL);
