//! Search answered by Postgres full-text search, when no Meilisearch is configured.
