-- Backfill jobs: a range of METRICS replayed through the engine in the background, its
-- incidents written like live ones. The process running a job (`owner`) refreshes
-- `heartbeat_at` about every second; a queued or running job whose heartbeat (or creation,
-- before it started) is older than 15 s is reported as interrupted and may be resumed, which
-- runs it again from the start: a backfill is idempotent.
CREATE TABLE backfills (
    id            uuid PRIMARY KEY,
    -- What was asked: from, to, rule_ids, service_ids, notify.
    request       jsonb NOT NULL,
    state         text NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    owner         uuid,
    heartbeat_at  timestamptz,
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Where the replay is: stage, stream positions, samples read, incidents found so far.
    progress      jsonb NOT NULL DEFAULT '{}',
    -- What a finished job wrote: written, unchanged, overlapping, transitions, incidents, warnings.
    result        jsonb,
    error         text,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);

CREATE INDEX backfills_created_idx ON backfills (created_at DESC, id DESC);
