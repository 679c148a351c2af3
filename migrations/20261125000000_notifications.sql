-- Notification fan-out: the channels each department chose, extra departments a rule notifies,
-- silences, and the delivery log (what was sent where, every attempt, what was suppressed).

-- Departments besides its own that hear about a rule's incidents.
CREATE TABLE rule_departments (
    rule_id        uuid NOT NULL REFERENCES rules (id) ON DELETE CASCADE,
    department_id  uuid NOT NULL REFERENCES departments (id) ON DELETE RESTRICT,
    PRIMARY KEY (rule_id, department_id)
);

CREATE INDEX rule_departments_department_idx ON rule_departments (department_id);

-- Where a department hears about incidents. `secret` signs webhook bodies, so it is kept as
-- given; it is never returned by the API.
CREATE TABLE notification_channels (
    id                    uuid PRIMARY KEY,
    department_id         uuid NOT NULL REFERENCES departments (id) ON DELETE CASCADE,
    name                  text NOT NULL,
    kind                  text NOT NULL CHECK (kind IN ('in_app', 'webhook', 'slack')),
    url                   text,
    secret                text,
    min_severity          text NOT NULL DEFAULT 'LOW'
                          CHECK (min_severity IN ('CRITICAL', 'HIGH', 'MEDIUM', 'LOW')),
    send_resolved         boolean NOT NULL DEFAULT true,
    -- Transitions for one service arriving within this many seconds go out as one message.
    group_wait_secs       integer NOT NULL DEFAULT 0 CHECK (group_wait_secs >= 0),
    -- Re-notify this often while an incident stays open; NULL never.
    repeat_interval_secs  integer CHECK (repeat_interval_secs > 0),
    enabled               boolean NOT NULL DEFAULT true,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'in_app') = (url IS NULL)),
    CHECK (kind <> 'webhook' OR secret IS NOT NULL)
);

CREATE INDEX notification_channels_department_idx ON notification_channels (department_id, created_at, id);

-- Silences: while one covers a notification's service, rule, department and severity, the
-- notification is recorded as suppressed and not sent. A NULL matcher matches anything. With a
-- recurrence the silence is active only inside its repeating windows (maintenance windows).
CREATE TABLE silences (
    id             uuid PRIMARY KEY,
    service_id     text,
    rule_id        uuid,
    department_id  uuid REFERENCES departments (id) ON DELETE CASCADE,
    severity       text CHECK (severity IN ('CRITICAL', 'HIGH', 'MEDIUM', 'LOW')),
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz,
    recurrence     jsonb,
    comment        text NOT NULL DEFAULT '',
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at IS NULL OR ends_at > starts_at),
    CHECK (recurrence IS NOT NULL OR ends_at IS NOT NULL)
);

CREATE INDEX silences_ends_idx ON silences (ends_at);

-- One outgoing message to one channel; its id is the Idempotency-Key. A grouped delivery
-- collects items while `grouping` (until `due_at`); from its first attempt, or from the start
-- without grouping, it is `sending` (`due_at` is then when the next attempt may start, which
-- enforces the backoff); it ends
-- `delivered`, `failed` (after the last attempt), `suppressed` (by `silence_id`) or
-- `cancelled` (its channel was deleted or disabled). `body` is frozen at the first attempt so
-- every retry sends the same bytes.
CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,
    channel_id      uuid REFERENCES notification_channels (id) ON DELETE SET NULL,
    channel_kind    text NOT NULL,
    channel_name    text NOT NULL,
    department_id   uuid REFERENCES departments (id) ON DELETE SET NULL,
    service_id      text NOT NULL,
    state           text NOT NULL CHECK (state IN ('grouping', 'sending', 'delivered', 'failed',
                                                    'suppressed', 'cancelled')),
    silence_id      uuid,
    due_at          timestamptz NOT NULL,
    lease_until     timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    body            text,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

-- At most one group collecting per channel and service, however many notifiers race.
CREATE UNIQUE INDEX deliveries_grouping_idx ON deliveries (channel_id, service_id) WHERE state = 'grouping';
-- The notifier's sweep for deliveries whose job was lost.
CREATE INDEX deliveries_unfinished_idx ON deliveries (due_at) WHERE state IN ('grouping', 'sending');
CREATE INDEX deliveries_created_idx ON deliveries (created_at DESC, id DESC);

-- What a delivery tells: one transition of one incident each. The key makes fan-out
-- idempotent: a channel hears about an event once, however often the event is delivered.
CREATE TABLE delivery_items (
    channel_id   uuid NOT NULL,
    event_key    text NOT NULL,
    delivery_id  uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    incident_id  uuid NOT NULL,
    kind         text NOT NULL,
    at           timestamptz NOT NULL,
    event        jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, event_key)
);

CREATE INDEX delivery_items_delivery_idx ON delivery_items (delivery_id);
CREATE INDEX delivery_items_incident_idx ON delivery_items (incident_id, created_at);

-- Every attempt to send a delivery. An attempt is written as `in_flight` before the request
-- goes out; one a crash cut short is marked `interrupted` by the next attempt.
CREATE TABLE delivery_attempts (
    delivery_id  uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('in_flight', 'ok', 'http_error', 'timeout',
                                                  'network', 'refused', 'interrupted')),
    status_code  integer,
    latency_ms   integer,
    error        text,
    target       text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    PRIMARY KEY (delivery_id, attempt)
);
