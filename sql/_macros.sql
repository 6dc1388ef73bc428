-- The business rules the models share, each written once as a DuckDB macro in the analytics
-- schema. pipelines/models.py runs this file before the models, in the same refresh
-- transaction; the macros are copied into the serving snapshot with the models, so analysts
-- can call them too (`select failure_rate(failed, succeeded) from ...`).
--
-- Calls are always schema-qualified (`analytics.failure_rate(...)`): a table built with the
-- warehouse's default search path finds them as well as a view or an analyst's query.
-- A table macro never names a relation itself: it is handed the one it reads
-- (`FROM analytics.failure_rate_by(analytics.job_outcomes, tag)`), so the model that calls
-- it still names every relation it reads and the loader sees the dependency.
--
-- analytics.utc_day(ts) -> DATE
--     the UTC calendar day of a TIMESTAMPTZ, whatever the session's TimeZone: a job's creation
--     day (its lake partition). The instant's microseconds read as a plain timestamp, so no
--     time-zone rule is looked up; the same expression as utc_day() in
--     pipelines/warehouse/tables.py, which the sync's own SQL uses.
-- analytics.failure_rate(failed, succeeded) -> DOUBLE
--     failed / (succeeded + failed): the share of finished jobs that failed; NULL when none
--     has finished (jobs still in flight are not counted either way).
-- analytics.is_terminal(state) -> BOOLEAN
--     whether a state is final: SUCCEED or FAILED (NULL for a NULL state).
-- analytics.waits_on(state) -> VARCHAR
--     which side must act for a job that has not finished: 'user' for the states that wait on
--     the customer, 'service' for every other non-terminal state; NULL for a terminal state.
--     Waiting on the user: every *_FAILED state but FAILED itself (AUDIT_FAILED, SPLIT_FAILED,
--     and any new one: the API says such states wait for the user and can still move on),
--     USER_REVIEW_REJECT (the user rejected the result and must act) and USER_RESULT_REVIEW
--     (the user is reviewing the result). In progress by the service: CREATING,
--     SYSTEM_AUDITING, AUDITING, WAITING_SPLIT, SPLITTING, ANNOTATING, WAITING, PROCESSING,
--     RESULT_REVIEW, UPLOADING, and a NULL or undocumented state (nothing says the user holds it).
-- analytics.failure_rate_by(outcomes, group_col) -> TABLE
--     one row per value of column `group_col` (NULL its own group) of the relation `outcomes`
--     (shaped like analytics.job_outcomes): group_col, total_jobs, succeeded, failed,
--     in_progress (every non-terminal state), failure_rate, waiting_on_user,
--     in_progress_by_service (in_progress = waiting_on_user + in_progress_by_service).
-- analytics.job_stats_by(outcomes, period) -> TABLE
--     one row per creation period ('day', 'week' starting Monday, 'month'; UTC) and project_id
--     of the relation `outcomes`: period_start, project_id, jobs_created, succeeded, failed,
--     failure_rate, p50_finish_seconds, p90_finish_seconds.
-- analytics.in_refresh_scope(project_id, job_id, create_time) -> BOOLEAN
--     TRUE: every job. An incremental model reads its jobs through it; while a refresh
--     rebuilds the jobs that changed, it admits those only (pipelines/incremental.py).
-- analytics.without_deleted_jobs(rows, jobs) -> TABLE
--     every row of the relation `rows` (any relation with project_id and job_id, all its
--     columns) except those of a deleted job: one the relation `jobs` (shaped like the
--     warehouse's main.voice_training_jobs) holds with deleted_at set. Rows of a job `jobs`
--     does not hold are kept. Hand it the names of CTEs over the warehouse tables
--     (`WITH jobs AS (FROM main.voice_training_jobs) ...`), not `main.<table>` itself:
--     query_table reads a name qualified with main. as unqualified, and inside an analytics
--     view that finds the analytics relation of the same name.

CREATE OR REPLACE MACRO analytics.utc_day(ts) AS
    CAST(make_timestamp(epoch_us(ts)) AS DATE);

CREATE OR REPLACE MACRO analytics.failure_rate(failed, succeeded) AS
    CASE WHEN succeeded + failed > 0 THEN failed::DOUBLE / (succeeded + failed) END;

CREATE OR REPLACE MACRO analytics.is_terminal(state) AS
    state IN ('SUCCEED', 'FAILED');

CREATE OR REPLACE MACRO analytics.waits_on(state) AS
    CASE
        WHEN analytics.is_terminal(state) THEN NULL
        WHEN ends_with(state, '_FAILED') OR state IN ('USER_REVIEW_REJECT', 'USER_RESULT_REVIEW') THEN 'user'
        ELSE 'service'
    END;

CREATE OR REPLACE MACRO analytics.failure_rate_by(outcomes, group_col) AS TABLE
    SELECT
        group_col,
        count(*) AS total_jobs,
        count(*) FILTER (WHERE outcome = 'succeeded') AS succeeded,
        count(*) FILTER (WHERE outcome = 'failed') AS failed,
        count(*) FILTER (WHERE outcome = 'in_progress') AS in_progress,
        analytics.failure_rate(failed, succeeded) AS failure_rate,
        count(*) FILTER (WHERE waiting_on_user) AS waiting_on_user,
        count(*) FILTER (WHERE in_progress_by_service) AS in_progress_by_service
    FROM query_table(outcomes)
    GROUP BY group_col;

-- Both percentiles come from one quantile_cont over a list: one sort of a group's times
-- instead of two (the daily stats of a million jobs in 0.08-0.09 s instead of 0.10-0.11 s), the
-- same values.
CREATE OR REPLACE MACRO analytics.job_stats_by(outcomes, period) AS TABLE
    SELECT * EXCLUDE (finish_quantiles)
    FROM (
        SELECT
            date_trunc(period, analytics.utc_day(create_time))::DATE AS period_start,
            project_id,
            count(*) AS jobs_created,
            count(*) FILTER (WHERE outcome = 'succeeded') AS succeeded,
            count(*) FILTER (WHERE outcome = 'failed') AS failed,
            analytics.failure_rate(failed, succeeded) AS failure_rate,
            quantile_cont(finish_seconds, [0.5, 0.9]) AS finish_quantiles,
            finish_quantiles[1] AS p50_finish_seconds,
            finish_quantiles[2] AS p90_finish_seconds
        FROM query_table(outcomes)
        GROUP BY period_start, project_id
    );

CREATE OR REPLACE MACRO analytics.in_refresh_scope(project_id, job_id, create_time) AS
    true;

-- A row of main.voice_training_jobs is a job the source still lists: no sync found it deleted.
CREATE OR REPLACE MACRO analytics.still_listed(deleted_at) AS
    deleted_at IS NULL;

CREATE OR REPLACE MACRO analytics.without_deleted_jobs(rows, jobs) AS TABLE
    SELECT *
    FROM query_table(rows) AS r
    WHERE NOT EXISTS (
        SELECT 1
        FROM query_table(jobs) AS d
        WHERE d.deleted_at IS NOT NULL
          AND d.project_id = r.project_id
          AND d.job_id = r.job_id
    );
