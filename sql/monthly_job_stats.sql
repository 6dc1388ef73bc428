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
WITH counts AS (
    SELECT
        date_trunc('month', create_time AT TIME ZONE 'UTC')::DATE AS month_start,
        project_id,
        count(*) AS jobs_created,
        count(*) FILTER (WHERE outcome = 'succeeded') AS succeeded,
        count(*) FILTER (WHERE outcome = 'failed') AS failed,
        quantile_cont(finish_seconds, 0.5) AS p50_finish_seconds,
        quantile_cont(finish_seconds, 0.9) AS p90_finish_seconds
    FROM analytics.job_outcomes
    GROUP BY ALL
)
SELECT
    month_start,
    project_id,
    jobs_created,
    succeeded,
    failed,
    CASE WHEN succeeded + failed > 0 THEN failed::DOUBLE / (succeeded + failed) END AS failure_rate,
    p50_finish_seconds,
    p90_finish_seconds
FROM counts
ORDER BY month_start, project_id;
