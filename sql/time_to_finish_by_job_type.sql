-- analytics.time_to_finish_by_job_type (table): one row per job_type (NULL is its own group)
-- that has at least one finished job (state SUCCEED or FAILED), over all projects. Deleted
-- jobs are left out.
-- Time to finish = from create_time to the valid_from of the job's first history version in
-- a terminal state, or to lastupdate_time when the history holds no such version.
-- Columns:
--   job_type            VARCHAR  the group,
--   finished_jobs       BIGINT   jobs in state SUCCEED or FAILED,
--   p50_finish_seconds  DOUBLE   median time to finish in seconds,
--   p90_finish_seconds  DOUBLE   90th percentile (linear interpolation),
--   p99_finish_seconds  DOUBLE   99th percentile (linear interpolation),
--   avg_finish_seconds  DOUBLE   mean time to finish in seconds.
CREATE OR REPLACE TABLE analytics.time_to_finish_by_job_type AS
SELECT * EXCLUDE (finish_quantiles)
FROM (
    SELECT
        job_type,
        count(*) AS finished_jobs,
        -- one sort of the group's times for the three percentiles (three calls sort three times)
        quantile_cont(finish_seconds, [0.5, 0.9, 0.99]) AS finish_quantiles,
        finish_quantiles[1] AS p50_finish_seconds,
        finish_quantiles[2] AS p90_finish_seconds,
        finish_quantiles[3] AS p99_finish_seconds,
        avg(finish_seconds) AS avg_finish_seconds
    FROM analytics.job_outcomes
    WHERE outcome IN ('succeeded', 'failed')
    GROUP BY job_type
)
ORDER BY finished_jobs DESC, job_type NULLS LAST;
