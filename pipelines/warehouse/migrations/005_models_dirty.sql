-- What changed since the SQL models' last refresh, in a way they read: a job appended, a new
-- version of one, a job marked deleted or listed again. Marked in the transaction that writes
-- the change; a refresh rebuilds those jobs' rows of analytics.job_outcomes (see
-- pipelines/incremental.py) and clears the marks in its own transaction.
-- A row with a job_id marks that job. A row without marks every job of a creation day (UTC) of
-- the project, as a backfill's appended jobs are marked; a NULL create_day there stands for the
-- jobs without a create_time.
CREATE TABLE IF NOT EXISTS models_dirty (project_id VARCHAR, create_day DATE, job_id VARCHAR);
