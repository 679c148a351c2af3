-- Operating Tracely over HTTP: working incidents (assignee, comments, API-made timeline events
-- relayed through an outbox), API keys, in-app notifications, departments with a description,
-- raw samples with per-minute rollups for charts, and the indexes that keep lists fast.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

ALTER TABLE departments ADD COLUMN description text NOT NULL DEFAULT '';

ALTER TABLE incidents ADD COLUMN assignee text;

-- Every list filter leads an index that also serves the default order (newest first), and
-- its reverse; the id breaks ties in the same direction.
DROP INDEX incidents_status_idx;
DROP INDEX incidents_service_idx;
DROP INDEX incidents_rule_idx;
DROP INDEX incidents_opened_at_idx;
CREATE INDEX incidents_opened_idx ON incidents (opened_at DESC, id DESC);
CREATE INDEX incidents_status_opened_idx ON incidents (status, opened_at DESC, id DESC);
CREATE INDEX incidents_severity_opened_idx ON incidents (severity, opened_at DESC, id DESC);
CREATE INDEX incidents_service_opened_idx ON incidents (service_id, opened_at DESC, id DESC);
CREATE INDEX incidents_rule_opened_idx ON incidents (rule_id, opened_at DESC, id DESC);
CREATE INDEX incidents_department_opened_idx ON incidents (department_id, opened_at DESC, id DESC);
-- `search`: a substring of the message, service or rule name.
CREATE INDEX incidents_search_idx ON incidents
    USING gin ((message || ' ' || service_id || ' ' || rule_name) gin_trgm_ops);

CREATE TABLE incident_comments (
    id           uuid PRIMARY KEY,
    incident_id  uuid NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    author       text NOT NULL,
    body         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX incident_comments_incident_idx ON incident_comments (incident_id, created_at);

-- Changes made over the API, committed with the change itself and relayed to the INCIDENTS
-- stream afterwards, so an outage of NATS loses nothing. `id` is the message's Nats-Msg-Id.
CREATE TABLE outbox (
    id            uuid PRIMARY KEY,
    subject       text NOT NULL,
    payload       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz
);

CREATE INDEX outbox_unpublished_idx ON outbox (created_at, id) WHERE published_at IS NULL;

CREATE FUNCTION notify_outbox() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tracely_outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER outbox_added AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();

-- Keys are shown once at creation; only a SHA-256 of the secret is kept.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    prefix        text NOT NULL,
    key_hash      bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- In-app notifications, per department. Rows are written by the notifier; `incident_id` is not
-- a foreign key because the notifier may see an incident before the recorder writes it.
CREATE TABLE notifications (
    id             uuid PRIMARY KEY,
    department_id  uuid REFERENCES departments (id) ON DELETE CASCADE,
    incident_id    uuid,
    kind           text NOT NULL,
    severity       text CHECK (severity IN ('CRITICAL', 'HIGH', 'MEDIUM', 'LOW')),
    title          text NOT NULL,
    body           text NOT NULL DEFAULT '',
    read_at        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX notifications_created_idx ON notifications (created_at DESC, id DESC);
CREATE INDEX notifications_department_idx ON notifications (department_id, created_at DESC, id DESC);
CREATE INDEX notifications_unread_idx ON notifications (department_id) WHERE read_at IS NULL;
CREATE INDEX notifications_incident_idx ON notifications (incident_id, created_at DESC, id DESC);

-- Raw samples as archived from METRICS, keyed by stream sequence so a redelivered sample is
-- stored (and counted in its rollup) once. Pruned after the retention period.
CREATE TABLE metric_samples (
    stream_seq   bigint PRIMARY KEY,
    service_id   text NOT NULL,
    metric_type  text NOT NULL,
    labels       jsonb NOT NULL DEFAULT '{}',
    value        double precision NOT NULL,
    recorded_at  timestamptz NOT NULL,
    sample_id    text
);

CREATE INDEX metric_samples_series_idx ON metric_samples (service_id, metric_type, recorded_at);
CREATE INDEX metric_samples_recorded_idx ON metric_samples (recorded_at);

-- Per service, metric and minute of event time; charts read only these.
CREATE TABLE metric_rollups (
    service_id   text NOT NULL,
    metric_type  text NOT NULL,
    minute       timestamptz NOT NULL,
    count        bigint NOT NULL,
    sum          double precision NOT NULL,
    min          double precision NOT NULL,
    max          double precision NOT NULL,
    -- The value of the latest sample in the minute, by (recorded_at, stream sequence).
    last         double precision NOT NULL,
    last_at      timestamptz NOT NULL,
    last_seq     bigint NOT NULL,
    PRIMARY KEY (service_id, metric_type, minute)
);
