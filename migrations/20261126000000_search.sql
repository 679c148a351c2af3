-- Full-text search of incidents, the engine `GET /api/search` falls back on without Meilisearch.
--
-- Each incident has a row in `incident_search` holding a tsvector (english stemming) of its
-- title (`<rule name> on <service display name or id>`, as store::search::document::TITLE_SQL
-- builds it; weight A), its service id when the title shows a display name instead (B), its
-- message (B) and the text of its comments (C), with a GIN index. Triggers keep it current:
--   * an incident gets its row when inserted, and is recomputed only when its rule name,
--     service or message actually change;
--   * a service's incidents are recomputed when its display name changes;
--   * an incident is recomputed when comments are added, changed or deleted.
-- The vector lives beside the incident rather than in it because the `record` consumer upserts
-- incidents all the time to move counters, peaks and times, and those updates are never HOT
-- (indexed columns change): a vector column would put every one of them through the GIN index
-- too, and a BEFORE INSERT trigger would compute a vector for every upsert that then finds its
-- row. Here an upsert that updates touches nothing of search at all.
--
-- Text is indexed, like it is highlighted, with `&`, `<` and `>` escaped as HTML entities: the
-- parser skips entities, and does not mistake `<word>` for a markup tag and drop the word.

CREATE FUNCTION search_escape(text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT replace(replace(replace($1, '&', '&amp;'), '<', '&lt;'), '>', '&gt;') $$;

-- Only the first 262,144 characters of the comments are indexed: a tsvector holds at most 1 MB,
-- and no conversation may ever make adding a comment fail.
CREATE FUNCTION incident_search_vector(rule_name text, service_id text, display_name text,
                                       message text, comments text) RETURNS tsvector
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT setweight(to_tsvector('english',
               search_escape(rule_name || ' on ' || coalesce(display_name, service_id))), 'A')
        || setweight(to_tsvector('english',
               CASE WHEN display_name IS NULL THEN '' ELSE search_escape(service_id) END), 'B')
        || setweight(to_tsvector('english', search_escape(message)), 'B')
        || setweight(to_tsvector('english',
               search_escape(left(coalesce(comments, ''), 262144))), 'C')
$$;

-- What a search for `text` asks, in web-search syntax: words (stemmed), "quoted phrases", `or`
-- and `-excluded` words. Text with no searchable word (only stop words or punctuation) gives an
-- empty query, which Postgres reports with a NOTICE at every use; callers test `numnode` first,
-- and the NOTICE of the parse itself is kept out of the logs here.
CREATE FUNCTION incident_search_query(text) RETURNS tsquery
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET client_min_messages = warning
    AS $$ SELECT websearch_to_tsquery('english', $1) $$;

-- The text of an incident's comments, oldest first.
CREATE FUNCTION incident_comments_text(incident uuid) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT string_agg(c.body, E'\n' ORDER BY c.created_at, c.id)
    FROM incident_comments c WHERE c.incident_id = incident
$$;

CREATE TABLE incident_search (
    incident_id  uuid PRIMARY KEY REFERENCES incidents (id) ON DELETE CASCADE,
    document     tsvector NOT NULL
);

-- Recomputes the documents of these incidents from their current rows. The rows are locked
-- first, in id order, and read after: a refresh that waited for another sees what that one
-- committed, and two refreshes cannot deadlock on each other.
CREATE FUNCTION refresh_incident_search(ids uuid[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM incident_search WHERE incident_id = ANY (ids)
        ORDER BY incident_id FOR NO KEY UPDATE;
    INSERT INTO incident_search (incident_id, document)
    SELECT i.id, incident_search_vector(i.rule_name, i.service_id, s.display_name, i.message,
                                        incident_comments_text(i.id))
    FROM incidents i JOIN services s ON s.id = i.service_id
    WHERE i.id = ANY (ids)
    ORDER BY i.id
    ON CONFLICT (incident_id) DO UPDATE SET document = EXCLUDED.document;
END
$$;

-- A new incident has no comments yet (they reference it). The service row is share-locked so
-- that a concurrent rename either finishes first (and its name is read here) or waits for this
-- transaction (and then refreshes this incident too). The lookup is a statement of its own so
-- that the vector is a plain expression, a few microseconds.
CREATE FUNCTION incidents_search_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    display_name text;
BEGIN
    SELECT s.display_name INTO display_name FROM services s WHERE s.id = NEW.service_id
        FOR SHARE;
    INSERT INTO incident_search (incident_id, document)
    VALUES (NEW.id, incident_search_vector(NEW.rule_name, NEW.service_id, display_name,
                                           NEW.message, NULL));
    RETURN NULL;
END
$$;

-- AFTER INSERT fires only for rows actually inserted, not for upserts that update.
CREATE TRIGGER incidents_search_inserted AFTER INSERT ON incidents
    FOR EACH ROW EXECUTE FUNCTION incidents_search_inserted();

CREATE FUNCTION incidents_search_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM refresh_incident_search(ARRAY[NEW.id]);
    RETURN NULL;
END
$$;

-- Only updates that set these columns are even considered, and only real changes refresh.
CREATE TRIGGER incidents_search_changed AFTER UPDATE OF rule_name, service_id, message
    ON incidents FOR EACH ROW
    WHEN (OLD.rule_name IS DISTINCT FROM NEW.rule_name
          OR OLD.service_id IS DISTINCT FROM NEW.service_id
          OR OLD.message IS DISTINCT FROM NEW.message)
    EXECUTE FUNCTION incidents_search_changed();

CREATE FUNCTION services_search_renamed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM refresh_incident_search(ARRAY(SELECT id FROM incidents WHERE service_id = NEW.id));
    RETURN NULL;
END
$$;

CREATE TRIGGER services_search_renamed AFTER UPDATE OF display_name ON services
    FOR EACH ROW WHEN (OLD.display_name IS DISTINCT FROM NEW.display_name)
    EXECUTE FUNCTION services_search_renamed();

-- Once per statement, so that adding or deleting many comments refreshes each incident once.
-- Deleting an incident deletes its comments and its document; the refresh then finds nothing.
CREATE FUNCTION incident_comments_search_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM refresh_incident_search(ARRAY(SELECT DISTINCT incident_id FROM new_comments));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM refresh_incident_search(ARRAY(SELECT DISTINCT incident_id FROM old_comments));
    ELSE
        PERFORM refresh_incident_search(ARRAY(
            SELECT incident_id FROM old_comments UNION SELECT incident_id FROM new_comments));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER incident_comments_search_added AFTER INSERT ON incident_comments
    REFERENCING NEW TABLE AS new_comments
    FOR EACH STATEMENT EXECUTE FUNCTION incident_comments_search_changed();
CREATE TRIGGER incident_comments_search_deleted AFTER DELETE ON incident_comments
    REFERENCING OLD TABLE AS old_comments
    FOR EACH STATEMENT EXECUTE FUNCTION incident_comments_search_changed();
CREATE TRIGGER incident_comments_search_updated AFTER UPDATE ON incident_comments
    REFERENCING OLD TABLE AS old_comments NEW TABLE AS new_comments
    FOR EACH STATEMENT EXECUTE FUNCTION incident_comments_search_changed();

-- Existing incidents, then the index over all of them at once.
INSERT INTO incident_search (incident_id, document)
SELECT i.id, incident_search_vector(i.rule_name, i.service_id, s.display_name, i.message,
                                    incident_comments_text(i.id))
FROM incidents i JOIN services s ON s.id = i.service_id;

CREATE INDEX incident_search_document_idx ON incident_search USING gin (document);
