-- analytics.voice_training_job_history (view): one row per observed version of a job
-- (slowly changing dimension, type 2), for jobs the source still lists; every version of a
-- deleted job is left out.
-- Columns: every column of the contract table voice_training_jobs, plus
--   valid_from  TIMESTAMPTZ  when this version became the job's state of record,
--   valid_to    TIMESTAMPTZ  when the next version replaced it (NULL = current version),
--   observed_at TIMESTAMPTZ  when the sync first saw this version.
-- deleted_at is dropped: deleted jobs are not shown at all.
CREATE OR REPLACE VIEW analytics.voice_training_job_history AS
SELECT h.* EXCLUDE (deleted_at)
FROM main.voice_training_job_history AS h
WHERE NOT EXISTS (
    SELECT 1
    FROM main.voice_training_jobs AS d
    WHERE d.deleted_at IS NOT NULL
      AND d.project_id = h.project_id
      AND d.job_id = h.job_id
);
