-- analytics.in_flight_backlog (table): one row per (state, age_bucket) of the jobs not yet
-- finished (any state other than SUCCEED and FAILED, NULL included), over all projects.
-- Deleted jobs are left out.
-- Age is "now" - create_time, where "now" is the newest lastupdate_time among the jobs, i.e.
-- the source's own clock, so a rebuild over the same rows gives the same answer.
-- Columns:
--   state       VARCHAR  the job state,
--   age_bucket  VARCHAR  '<1h', '1h-1d', '1-7d', '7-30d' or '>30d' (lower bound inclusive);
--                        NULL when create_time is unknown,
--   jobs        BIGINT   jobs in that state and bucket,
--   waits_on    VARCHAR  the side the state waits on: 'user' (the customer must act: a
--                        *_FAILED state other than FAILED, USER_REVIEW_REJECT, USER_RESULT_REVIEW)
--                        or 'service' (any other state, NULL included); see analytics.waits_on
--                        in sql/_macros.sql,
--   waiting_on_user         BIGINT  jobs of the row waiting on the user (jobs or 0),
--   in_progress_by_service  BIGINT  jobs of the row the service is working on (jobs or 0).
CREATE OR REPLACE TABLE analytics.in_flight_backlog AS
WITH source_clock AS (
    SELECT max(lastupdate_time) AS now FROM analytics.job_outcomes
),
aged AS (
    SELECT
        o.state,
        o.waits_on,
        o.waiting_on_user,
        o.in_progress_by_service,
        epoch(c.now) - epoch(o.create_time) AS age_seconds
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
    count(*) AS jobs,
    waits_on,
    count(*) FILTER (WHERE waiting_on_user) AS waiting_on_user,
    count(*) FILTER (WHERE in_progress_by_service) AS in_progress_by_service
FROM aged
GROUP BY state, waits_on, age_bucket
ORDER BY state NULLS LAST, min(age_seconds) NULLS LAST;
