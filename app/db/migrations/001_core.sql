-- Core tables: pose library, credit accounts and their append-only ledger,
-- generations with their pose slots, and recorded errors.

CREATE TABLE poses (
    pose_id     text PRIMARY KEY,
    name        text NOT NULL,
    category    text NOT NULL,
    -- 18 OpenPose body keypoints as [x, y] pairs in 0..1 image coordinates.
    keypoints   jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX poses_category ON poses (category, pose_id);

CREATE TABLE credit_accounts (
    user_id     text PRIMARY KEY,
    balance     bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE generations (
    id                text PRIMARY KEY,
    user_id           text NOT NULL,
    prompt            text NOT NULL,
    status            text NOT NULL CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    poses_count       integer NOT NULL CHECK (poses_count > 0),
    price_per_pose    integer NOT NULL CHECK (price_per_pose > 0),
    credits_charged   bigint NOT NULL,
    credits_refunded  bigint NOT NULL DEFAULT 0,
    error_type        text,
    error_message     text,
    idempotency_key   text,
    -- Which delivery of the job owns the generation; bumped when an abandoned one is re-enqueued.
    attempt           integer NOT NULL DEFAULT 1,
    -- While queued: when to check that its job still exists. While processing: the worker's lease.
    lease_expires_at  timestamptz,
    trace_context     jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    duration_ms       bigint,
    CONSTRAINT generations_idempotency UNIQUE (user_id, idempotency_key)
);
CREATE INDEX generations_user_created ON generations (user_id, created_at DESC, id DESC);
CREATE INDEX generations_created ON generations (created_at);
CREATE INDEX generations_unfinished ON generations (lease_expires_at)
    WHERE status IN ('queued', 'processing');

CREATE TABLE generation_poses (
    id             bigserial PRIMARY KEY,
    generation_id  text NOT NULL REFERENCES generations (id),
    position       integer NOT NULL,
    pose_id        text NOT NULL REFERENCES poses (pose_id),
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'completed', 'failed')),
    error_type     text,
    error_message  text,
    image_key      text,
    queue_wait_ms  integer,
    controlnet_ms  integer,
    provider_ms    integer,
    upload_ms      integer,
    duration_ms    integer,
    started_at     timestamptz,
    finished_at    timestamptz,
    CONSTRAINT generation_poses_slot UNIQUE (generation_id, position)
);
CREATE INDEX generation_poses_pose ON generation_poses (pose_id);

CREATE TABLE credit_ledger (
    id                  bigserial PRIMARY KEY,
    user_id             text NOT NULL REFERENCES credit_accounts (user_id),
    kind                text NOT NULL CHECK (kind IN ('grant', 'charge', 'refund')),
    amount              bigint NOT NULL CHECK (amount > 0),
    balance_after       bigint NOT NULL CHECK (balance_after >= 0),
    generation_id       text REFERENCES generations (id),
    generation_pose_id  bigint REFERENCES generation_poses (id),
    note                text,
    created_by          text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
-- Retries are harmless: one charge per generation, one refund per failed pose.
CREATE UNIQUE INDEX credit_ledger_one_charge ON credit_ledger (generation_id) WHERE kind = 'charge';
CREATE UNIQUE INDEX credit_ledger_one_refund ON credit_ledger (generation_pose_id) WHERE kind = 'refund';
CREATE INDEX credit_ledger_user ON credit_ledger (user_id, id DESC);
CREATE INDEX credit_ledger_created ON credit_ledger (created_at, kind);

CREATE TABLE error_events (
    id                  bigserial PRIMARY KEY,
    error_type          text NOT NULL CHECK (error_type IN (
        'FLUX_API_ERROR', 'STORAGE_ERROR', 'CREDIT_ERROR', 'TIMEOUT_ERROR', 'NETWORK_ERROR',
        'CONTROLNET_ERROR', 'VALIDATION_ERROR', 'UNKNOWN_ERROR')),
    component           text NOT NULL,
    message             text,
    user_id             text,
    generation_id       text,
    generation_pose_id  bigint,
    occurred_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX error_events_occurred ON error_events (occurred_at);
CREATE INDEX error_events_type ON error_events (error_type, occurred_at);
