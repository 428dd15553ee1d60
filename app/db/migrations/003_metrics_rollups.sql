-- Exact rollups behind the admin /metrics endpoints, maintained by triggers in the same transactions
-- that write generations, generation_poses, credit_ledger and error_events (no domain code knows).
--
-- Write path: row triggers append signed *deltas* (insert-only tables), so concurrent writers never
-- wait on a hot counter row and can never deadlock on rollup rows, whatever order they touch them in.
-- metrics_fold() moves deltas into the rollup tables, one folder at a time (a try-advisory lock: a
-- busy folder is skipped, never waited for). It runs at commit of each transaction that inserts a
-- generation or an error event, and from the metrics readers.
-- Read path: rollup rows + deltas not folded yet + raw rows of the two partial edge hours = exact.
-- Every rollup hour is date_trunc('hour', <timestamp>, 'UTC'): rolling windows need whole UTC hours.
-- The triggers and functions (metrics_*) are in app/db/functions/.

-- Writers wait (all four tables at once, so no lock-order deadlock) until the triggers exist and the
-- backfill after them has read what is already there: every row is counted exactly once.
LOCK TABLE generations, generation_poses, credit_ledger, error_events IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE metrics_generation_deltas (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hour                  timestamptz NOT NULL,  -- the generation's created_at hour
    user_id               text NOT NULL,
    generations           integer NOT NULL DEFAULT 0,
    queued                integer NOT NULL DEFAULT 0,
    processing            integer NOT NULL DEFAULT 0,
    completed             integer NOT NULL DEFAULT 0,
    failed                integer NOT NULL DEFAULT 0,
    poses_requested       integer NOT NULL DEFAULT 0,
    poses_delivered       integer NOT NULL DEFAULT 0,
    duration_sum_ms       bigint NOT NULL DEFAULT 0,
    duration_count        integer NOT NULL DEFAULT 0,
    pose_duration_sum_ms  bigint NOT NULL DEFAULT 0,
    pose_duration_count   integer NOT NULL DEFAULT 0
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);

-- Generations by created_at hour: their current statuses, poses, and finished durations.
CREATE TABLE metrics_generation_hourly (
    hour                  timestamptz PRIMARY KEY,
    generations           bigint NOT NULL,
    queued                bigint NOT NULL,
    processing            bigint NOT NULL,
    completed             bigint NOT NULL,
    failed                bigint NOT NULL,
    poses_requested       bigint NOT NULL,
    poses_delivered       bigint NOT NULL,
    duration_sum_ms       bigint NOT NULL,
    duration_count        bigint NOT NULL,
    pose_duration_sum_ms  bigint NOT NULL,
    pose_duration_count   bigint NOT NULL
) WITH (fillfactor = 70);

-- All-time per user, ranked by an index so top-users reads only the first rows.
CREATE TABLE metrics_user_totals (
    user_id          text PRIMARY KEY,
    generations      bigint NOT NULL,
    completed        bigint NOT NULL,
    poses_delivered  bigint NOT NULL
);
CREATE INDEX metrics_user_totals_rank ON metrics_user_totals (generations DESC, user_id COLLATE "C");

CREATE TABLE metrics_pose_deltas (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pose_id  text NOT NULL,
    slots    integer NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);

-- All-time generation pose slots per pose.
CREATE TABLE metrics_pose_usage (
    pose_id  text PRIMARY KEY,
    slots    bigint NOT NULL
) WITH (fillfactor = 70);

CREATE TABLE metrics_credit_deltas (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hour      timestamptz NOT NULL,  -- the ledger row's created_at hour
    charged   bigint NOT NULL,
    refunded  bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);

-- Ledger charge and refund amounts by the ledger rows' created_at hour.
CREATE TABLE metrics_credit_hourly (
    hour      timestamptz PRIMARY KEY,
    charged   bigint NOT NULL,
    refunded  bigint NOT NULL
) WITH (fillfactor = 70);

CREATE TABLE metrics_error_deltas (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hour        timestamptz NOT NULL,  -- the event's occurred_at hour
    error_type  text NOT NULL,
    events      integer NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);

-- Error events by type and occurred_at hour, and all time. The last occurrence is not rolled up:
-- readers take max(occurred_at) per type from error_events_type, which stays right when rows go away.
CREATE TABLE metrics_error_hourly (
    hour        timestamptz NOT NULL,
    error_type  text NOT NULL,
    events      bigint NOT NULL,
    PRIMARY KEY (hour, error_type)
) WITH (fillfactor = 70);

CREATE TABLE metrics_error_totals (
    error_type  text PRIMARY KEY,
    events      bigint NOT NULL
) WITH (fillfactor = 70);


-- after functions:
-- Backfill from the rows already there.
SELECT metrics_rebuild();
