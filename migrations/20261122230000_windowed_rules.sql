-- Windowed rules: aggregation over an event-time window, pending period, hysteresis,
-- auto-resolve, label selectors and absence rules. Existing rules keep their seed-style meaning
-- through the defaults.

ALTER TABLE rules
    ADD COLUMN kind text NOT NULL DEFAULT 'threshold' CHECK (kind IN ('threshold', 'absent')),
    ADD COLUMN labels jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN aggregation text NOT NULL DEFAULT 'last'
        CHECK (aggregation IN ('last', 'avg', 'min', 'max', 'sum', 'count',
                               'p50', 'p90', 'p95', 'p99', 'rate')),
    ADD COLUMN window_ms bigint NOT NULL DEFAULT 0 CHECK (window_ms >= 0),
    ADD COLUMN pending_for_ms bigint NOT NULL DEFAULT 0 CHECK (pending_for_ms >= 0),
    ADD COLUMN clear_threshold double precision,
    ADD COLUMN clear_for_ms bigint NOT NULL DEFAULT 0 CHECK (clear_for_ms >= 0),
    ADD COLUMN auto_resolve boolean NOT NULL DEFAULT false;

-- Evaluators must hear about changes to the new columns too.
DROP TRIGGER rules_changed ON rules;
CREATE TRIGGER rules_changed
    AFTER INSERT OR DELETE OR TRUNCATE
       OR UPDATE OF name, metric_type, service_id, operator, threshold, severity,
                    department_id, enabled, kind, labels, aggregation, window_ms,
                    pending_for_ms, clear_threshold, clear_for_ms, auto_resolve
    ON rules
    FOR EACH STATEMENT EXECUTE FUNCTION notify_rules_changed();

-- Whether clearing closes the incident, as its rule said when it opened.
ALTER TABLE incidents ADD COLUMN auto_resolve boolean NOT NULL DEFAULT false;
