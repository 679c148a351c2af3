//! Classifying failures as transient (retry later) or permanent (dead-letter now).

/// Whether a database error may go away by itself (connection loss, overload, a restart), as
/// opposed to one the same input would hit again (constraint or data errors).
pub fn is_transient_db_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let class = code.as_deref().map(|c| &c[..c.len().min(2)]);
            // 08 connection, 40 rollback (serialization, deadlock), 53 resources,
            // 57 operator intervention (shutdown), 58 system errors.
            matches!(class, Some("08" | "40" | "53" | "57" | "58"))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}
