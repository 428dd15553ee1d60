-- Operator actions: retries of failed poses with their history, an append-only audit of every action,
-- and the indexes behind the admin search of generations.
--
-- A retry runs the failed poses of a finished generation again, in place: the generation becomes a new
-- "run" (generations.run, 1 for the original), each retried pose row is reset to pending under that run,
-- and its previous outcome is archived in generation_pose_attempts first. Who asked and how it was paid
-- is in generation_runs. The ledger tells runs apart (credit_ledger.run), so a generation can be charged
-- once per run and a pose refunded once per run: retries stay exact, and doing one twice is impossible.

-- Constant defaults: metadata-only changes, however many rows the tables hold.
ALTER TABLE generations
    ADD COLUMN run integer NOT NULL DEFAULT 1,
    -- When the current run was queued (NULL for the original run: created_at).
    ADD COLUMN run_started_at timestamptz;
ALTER TABLE generation_poses
    ADD COLUMN run integer NOT NULL DEFAULT 1,
    -- False when this run of the pose is on the house: a failure then refunds nothing (nothing was paid).
    ADD COLUMN run_charged boolean NOT NULL DEFAULT true;
ALTER TABLE credit_ledger
    ADD COLUMN run integer NOT NULL DEFAULT 1;

-- 'waiver': a retry on the house. Its amount is what the run would have cost; the balance does not move
-- (balance_after equals the balance before), so balance = grants - charges + refunds still holds.
ALTER TABLE credit_ledger DROP CONSTRAINT credit_ledger_kind_check;
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_kind_check
    CHECK (kind IN ('grant', 'charge', 'refund', 'waiver'));

-- One credit decision (charge or waiver) per generation and run; one refund per pose and run.
DROP INDEX credit_ledger_one_charge;
CREATE UNIQUE INDEX credit_ledger_one_charge ON credit_ledger (generation_id, run) WHERE kind IN ('charge', 'waiver');
DROP INDEX credit_ledger_one_refund;
CREATE UNIQUE INDEX credit_ledger_one_refund ON credit_ledger (generation_pose_id, run) WHERE kind = 'refund';

CREATE TABLE operator_audit (
    id               bigserial PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    -- The admin token's subject.
    actor            text NOT NULL,
    action           text NOT NULL CHECK (action IN (
        'retry_dry_run', 'retry', 'pause_intake', 'resume_intake', 'pause_workers', 'resume_workers')),
    -- What it applied to: the filter or generation id of a retry, the reason of a pause.
    target           jsonb NOT NULL DEFAULT '{}',
    -- What it did: generations, poses, users and credits of a retry; whether a pause changed anything.
    counts           jsonb NOT NULL DEFAULT '{}',
    idempotency_key  text,
    CONSTRAINT operator_audit_idempotency UNIQUE (actor, action, idempotency_key)
);
CREATE INDEX operator_audit_at ON operator_audit (at DESC, id DESC);

-- Runs after the first: who asked for the retry, when, and how it was paid.
CREATE TABLE generation_runs (
    generation_id  text NOT NULL REFERENCES generations (id),
    run            integer NOT NULL CHECK (run > 1),
    requested_by   text NOT NULL,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    charged        boolean NOT NULL,
    poses          integer NOT NULL CHECK (poses > 0),
    -- Charged to the user (charged) or waived (on the house).
    credits        bigint NOT NULL,
    -- Checked at commit: the audit row is written last, with the counts of what was done.
    audit_id       bigint NOT NULL REFERENCES operator_audit (id) DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (generation_id, run)
);
CREATE INDEX generation_runs_audit ON generation_runs (audit_id);

-- A pose's outcome in a run it was retried after (its current run's outcome is on generation_poses).
CREATE TABLE generation_pose_attempts (
    generation_pose_id  bigint NOT NULL REFERENCES generation_poses (id),
    run                 integer NOT NULL,
    status              text NOT NULL CHECK (status IN ('completed', 'failed')),
    charged             boolean NOT NULL,
    error_type          text,
    error_message       text,
    provider_ms         integer,
    duration_ms         integer,
    started_at          timestamptz,
    finished_at         timestamptz,
    PRIMARY KEY (generation_pose_id, run)
);

-- Admin search (GET /admin/generations), newest first. Failed generations and error types are the
-- operator's usual filters and a small part of the table, so their indexes are partial; a user's
-- generations use generations_user_created, a created window generations_created.
CREATE INDEX generations_failed_created ON generations (created_at DESC, id DESC) WHERE status = 'failed';
CREATE INDEX generations_error_type_created ON generations (error_type, created_at DESC, id DESC)
    WHERE error_type IS NOT NULL;
CREATE INDEX generations_finished ON generations (finished_at) WHERE finished_at IS NOT NULL;
-- "What failed while the provider was down": a day of finished generations is ~1/60 of them, its failed
-- ones a few percent of that; without this the page reads every finished row of the window.
CREATE INDEX generations_failed_finished ON generations (finished_at) WHERE status = 'failed';
