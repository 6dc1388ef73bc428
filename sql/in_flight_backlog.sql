-- analytics.in_flight_backlog (table): one row per (state, age_bucket) of the jobs not yet
-- finished (any state other than SUCCEED and FAILED, NULL included), over all projects.
-- Deleted jobs are left out.
-- Age is "now" - create_time, where "now" is the newest lastupdate_time among the jobs, i.e.
-- the source's own clock, so a rebuild over the same rows gives the same answer.
-- Columns:
--   state       VARCHAR  the job state,
--   age_bucket  VARCHAR  '<1h', '1h-1d', '1-7d', '7-30d' or '>30d' (lower bound inclusive);
--                        NULL when create_time is unknown,
--   jobs        BIGINT   jobs in that state and bucket.
CREATE OR REPLACE TABLE analytics.in_flight_backlog AS
WITH source_clock AS (
    SELECT max(lastupdate_time) AS now FROM analytics.job_outcomes
),
aged AS (
    SELECT o.state, epoch(c.now) - epoch(o.create_time) AS age_seconds
    FROM analytics.job_outcomes AS o, source_clock AS c
    WHERE o.outcome = 'in_progress'
)
SELECT
    state,
    CASE
        WHEN age_seconds IS NULL THEN NULL
        WHEN age_seconds < 3600 THEN '<1h'
        WHEN age_seconds < 86400 THEN '1h-1d'
        WHEN age_seconds < 7 * 86400 THEN '1-7d'
        WHEN age_seconds < 30 * 86400 THEN '7-30d'
        ELSE '>30d'
    END AS age_bucket,
    count(*) AS jobs
FROM aged
GROUP BY ALL
ORDER BY state NULLS LAST, min(age_seconds) NULLS LAST;
