-- analytics.voice_training_job_history (view): one row per observed version of a job
-- (slowly changing dimension, type 2), for jobs the source still lists; every version of a
-- deleted job is left out.
-- Columns: every column of the contract table voice_training_jobs, plus
--   valid_from  TIMESTAMPTZ  when this version became the job's state of record,
--   valid_to    TIMESTAMPTZ  when the next version replaced it (NULL = current version),
--   observed_at TIMESTAMPTZ  when the sync first saw this version.
-- deleted_at (deleted jobs are not shown at all) and the warehouse's row_hash are dropped.
CREATE OR REPLACE VIEW analytics.voice_training_job_history AS
WITH versions AS (FROM main.voice_training_job_history), jobs AS (FROM main.voice_training_jobs)
-- Only the contract's columns: bookkeeping columns the warehouse may add stay out of view.
SELECT COLUMNS(lambda c: c NOT IN ('deleted_at', 'row_hash'))
FROM analytics.without_deleted_jobs(versions, jobs);
