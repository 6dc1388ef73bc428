-- A job's current version is stored once, in voice_training_jobs: the history table held a
-- second copy of every job (half the file, and half of what a backfill wrote). The jobs table
-- gains the current version's valid_from, observed_at and row_hash; the versions it replaced
-- live in voice_training_job_past_versions; voice_training_job_history is a view of both, with
-- the same columns and rows as the table it replaces.

ALTER TABLE voice_training_jobs ADD COLUMN IF NOT EXISTS valid_from TIMESTAMPTZ;
ALTER TABLE voice_training_jobs ADD COLUMN IF NOT EXISTS observed_at TIMESTAMPTZ;
ALTER TABLE voice_training_jobs ADD COLUMN IF NOT EXISTS row_hash VARCHAR;

ALTER TABLE voice_training_job_history RENAME TO voice_training_job_past_versions;

-- The current version (valid_to NULL) is the jobs row (apply wrote both from the same row;
-- its synced_at is observed_at): its bookkeeping moves to the jobs row and the copy goes.
UPDATE voice_training_jobs j SET valid_from = h.valid_from, observed_at = h.observed_at, row_hash = h.row_hash
FROM voice_training_job_past_versions h
WHERE h.project_id = j.project_id AND h.job_id = j.job_id AND h.valid_to IS NULL;

DELETE FROM voice_training_job_past_versions h USING voice_training_jobs j
WHERE h.project_id = j.project_id AND h.job_id = j.job_id AND h.valid_to IS NULL AND j.row_hash IS NOT NULL;

-- SCD type 2: one row per version of a job as the sync saw it. A jobs row without row_hash has
-- no version of record (none in the warehouses this program wrote).
CREATE OR REPLACE VIEW voice_training_job_history AS
SELECT * FROM voice_training_job_past_versions
UNION ALL BY NAME
SELECT * EXCLUDE (observed_at) REPLACE (observed_at AS synced_at), observed_at, CAST(NULL AS TIMESTAMPTZ) AS valid_to
FROM voice_training_jobs WHERE row_hash IS NOT NULL;
