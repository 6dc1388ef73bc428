-- analytics.monthly_job_stats (table): one row per creation month (UTC) and project_id,
-- counting the jobs created in that period. Deleted jobs are left out.
-- Columns:
--   month_start         DATE     first day of the period (UTC),
--   project_id          VARCHAR  the project,
--   jobs_created        BIGINT   jobs created in the period,
--   succeeded           BIGINT   of those, jobs now in state SUCCEED,
--   failed              BIGINT   of those, jobs now in state FAILED,
--   failure_rate        DOUBLE   failed / (succeeded + failed); NULL when none has finished,
--   p50_finish_seconds  DOUBLE   median seconds from creation to the terminal state, over the
--                                finished jobs (NULL when none has finished),
--   p90_finish_seconds  DOUBLE   90th percentile of the same (linear interpolation).
CREATE OR REPLACE TABLE analytics.monthly_job_stats AS
SELECT * RENAME (period_start AS month_start)
FROM analytics.job_stats_by(analytics.job_outcomes, 'month')
ORDER BY month_start, project_id;
