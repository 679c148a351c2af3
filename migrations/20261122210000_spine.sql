-- The spine: departments, services, rules, incidents and their timeline.

CREATE TABLE departments (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Services are registered on first sight of a sample.
CREATE TABLE services (
    id             text PRIMARY KEY,
    display_name   text,
    department_id  uuid REFERENCES departments (id) ON DELETE SET NULL,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rules (
    id             uuid PRIMARY KEY,
    name           text NOT NULL,
    metric_type    text NOT NULL,
    service_id     text,
    operator       text NOT NULL CHECK (operator IN ('>', '>=', '<', '<=', '==', '!=')),
    threshold      double precision NOT NULL,
    severity       text NOT NULL CHECK (severity IN ('CRITICAL', 'HIGH', 'MEDIUM', 'LOW')),
    department_id  uuid REFERENCES departments (id) ON DELETE RESTRICT,
    enabled        boolean NOT NULL DEFAULT true,
    trigger_count  bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX rules_metric_type_idx ON rules (metric_type);

-- Evaluators listen on this channel and reload their rules on any change.
CREATE FUNCTION notify_rules_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tracely_rules_changed', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER rules_changed
    AFTER INSERT OR DELETE OR TRUNCATE
       OR UPDATE OF name, metric_type, service_id, operator, threshold, severity,
                    department_id, enabled
    ON rules
    FOR EACH STATEMENT EXECUTE FUNCTION notify_rules_changed();

-- Incidents outlive their rules, so rule_id is not a foreign key; rule_name is a snapshot.
CREATE TABLE incidents (
    id                 uuid PRIMARY KEY,
    rule_id            uuid NOT NULL,
    rule_name          text NOT NULL,
    service_id         text NOT NULL REFERENCES services (id),
    metric_type        text NOT NULL,
    series_key         text NOT NULL,
    labels             jsonb NOT NULL DEFAULT '{}',
    department_id      uuid REFERENCES departments (id) ON DELETE SET NULL,
    severity           text NOT NULL CHECK (severity IN ('CRITICAL', 'HIGH', 'MEDIUM', 'LOW')),
    status             text NOT NULL DEFAULT 'OPEN' CHECK (status IN ('OPEN', 'IN_PROGRESS', 'CLOSED')),
    operator           text NOT NULL,
    threshold          double precision NOT NULL,
    message            text NOT NULL,
    value              double precision NOT NULL,
    peak_value         double precision NOT NULL,
    last_value         double precision NOT NULL,
    violation_count    bigint NOT NULL,
    opened_at          timestamptz NOT NULL,
    last_violation_at  timestamptz NOT NULL,
    acknowledged_at    timestamptz,
    in_progress_at     timestamptz,
    closed_at          timestamptz,
    resolved_at        timestamptz,
    source             text NOT NULL CHECK (source IN ('live', 'backfill')),
    last_sample_seq    bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX incidents_opened_at_idx ON incidents (opened_at DESC, id);
CREATE INDEX incidents_status_idx ON incidents (status);
CREATE INDEX incidents_service_idx ON incidents (service_id);
CREATE INDEX incidents_rule_idx ON incidents (rule_id);
-- The evaluator rebuilds its open episodes from this at start-up.
CREATE INDEX incidents_unresolved_idx ON incidents (rule_id) WHERE resolved_at IS NULL;
-- ... and the sequence watermarks of series touched since its ack floor.
CREATE INDEX incidents_last_sample_seq_idx ON incidents (last_sample_seq);
-- ... and when each series last resolved.
CREATE INDEX incidents_series_resolved_idx ON incidents (rule_id, series_key, resolved_at);

-- The timeline. Ids are deterministic for pipeline events so redelivery inserts nothing new.
CREATE TABLE incident_events (
    id           uuid PRIMARY KEY,
    incident_id  uuid NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    kind         text NOT NULL,
    at           timestamptz NOT NULL,
    actor        text NOT NULL,
    data         jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX incident_events_incident_idx ON incident_events (incident_id, at);
