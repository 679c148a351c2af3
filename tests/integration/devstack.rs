//! The child-process servers used by `tracely dev` and the integration tests.

use std::time::Duration;

use sqlx::Connection;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tracely::devstack::{free_port, NatsServer, Postgres};

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    // Zombies are gone for every purpose that matters here.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false);
    exists && !zombie
}

/// Reads the greeting on a fresh connection, within `wait`.
async fn nats_greeting(port: u16, wait: Duration) -> Option<String> {
    let read = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.ok()?;
        Some(line)
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

#[test]
fn free_port_is_bindable() {
    let port = free_port().unwrap();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[tokio::test]
async fn nats_starts_speaks_protocol_and_stops() {
    let dir = TempDir::new().unwrap();
    let nats = NatsServer::start(dir.path()).await.unwrap();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
    assert_eq!(nats.store_dir(), dir.path());

    let info = nats_greeting(nats.port(), Duration::from_secs(5))
        .await
        .expect("no greeting");
    assert!(info.starts_with("INFO {"), "not a NATS greeting: {info}");
    assert!(info.contains("\"jetstream\":true"), "JetStream off: {info}");

    let pid = nats.pid();
    nats.stop().await.unwrap();
    assert!(!alive(pid));
    assert!(dir.path().join("nats-server.log").exists());
}

#[tokio::test]
async fn nats_pause_resume_and_restart_on_same_port() {
    let dir = TempDir::new().unwrap();
    let mut nats = NatsServer::start(dir.path()).await.unwrap();
    let port = nats.port();

    nats.pause();
    assert!(
        nats_greeting(port, Duration::from_millis(500))
            .await
            .is_none(),
        "a paused server answered"
    );
    nats.resume();
    assert!(nats_greeting(port, Duration::from_secs(5)).await.is_some());

    let pid = nats.pid();
    nats.kill();
    assert!(!alive(pid));
    let nats = NatsServer::start_on(dir.path(), port).await.unwrap();
    assert_eq!(nats.port(), port);
    assert!(nats_greeting(port, Duration::from_secs(5)).await.is_some());
}

#[tokio::test]
async fn postgres_from_template_creates_database() {
    let dir = TempDir::new().unwrap();
    let pg = Postgres::start_from_template(dir.path()).await.unwrap();
    let url = pg.create_database("tracely_test").await.unwrap();
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{}/tracely_test", pg.port())
    );
    // Idempotent.
    assert_eq!(pg.create_database("tracely_test").await.unwrap(), url);

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(db, "tracely_test");
    conn.close().await.unwrap();

    let pid = pg.pid();
    pg.stop().await.unwrap();
    assert!(!alive(pid));
}

#[tokio::test]
async fn postgres_restarts_after_kill_on_same_data_dir() {
    let dir = TempDir::new().unwrap();
    let mut pg = Postgres::start_from_template(dir.path()).await.unwrap();
    let port = pg.port();
    let url = pg.create_database("app").await.unwrap();
    {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        // Fast mode commits asynchronously; this row must reach the WAL first.
        sqlx::query("SET synchronous_commit = on")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::raw_sql("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
            .execute(&mut conn)
            .await
            .unwrap();
        // Leave the connection open: its backend must not block the restart.
        std::mem::forget(conn);
    }

    let pid = pg.pid();
    pg.kill();
    assert!(!alive(pid));

    let pg = Postgres::start_on(dir.path(), port, true).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&pg.url("app")).await.unwrap();
    let v: i32 = sqlx::query_scalar("SELECT v FROM t")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, 42);
}

#[tokio::test]
async fn postgres_pause_blocks_queries_until_resume() {
    let dir = TempDir::new().unwrap();
    let pg = Postgres::start_from_template(dir.path()).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&pg.url("postgres"))
        .await
        .unwrap();

    pg.pause();
    let stalled = tokio::time::timeout(
        Duration::from_millis(500),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut conn),
    )
    .await;
    assert!(stalled.is_err(), "a paused server answered");
    pg.resume();

    // The timed-out query left the connection in an unknown state; use a new one.
    let mut conn = sqlx::PgConnection::connect(&pg.url("postgres"))
        .await
        .unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
}

#[tokio::test]
async fn postgres_stops_a_server_left_over_on_its_data_dir() {
    let dir = TempDir::new().unwrap();
    let orphan = Postgres::start_from_template(dir.path()).await.unwrap();
    let orphan_pid = orphan.pid();
    // As if the parent had been SIGKILLed: nobody will stop this server.
    std::mem::forget(orphan);

    let pg = Postgres::start(dir.path(), true).await.unwrap();
    assert!(!alive(orphan_pid));
    assert_ne!(pg.pid(), orphan_pid);
    pg.create_database("after").await.unwrap();
    // The forgotten child is ours to reap.
    // SAFETY: waits for a child pid with no status pointer.
    unsafe { libc::waitpid(orphan_pid as libc::pid_t, std::ptr::null_mut(), 0) };
}

#[tokio::test]
async fn drop_kills_the_servers() {
    let nats_dir = TempDir::new().unwrap();
    let pg_dir = TempDir::new().unwrap();
    let nats = NatsServer::start(nats_dir.path()).await.unwrap();
    // A nested data dir: the temp dir's own parent must be reachable too.
    let pg = Postgres::start_from_template(&pg_dir.path().join("data"))
        .await
        .unwrap();
    let (nats_pid, pg_pid) = (nats.pid(), pg.pid());
    assert!(alive(nats_pid) && alive(pg_pid));

    drop(nats);
    drop(pg);
    assert!(!alive(nats_pid), "nats-server survived drop");
    assert!(!alive(pg_pid), "postgres survived drop");
}

#[tokio::test]
async fn start_on_a_port_served_by_another_server_fails() {
    let (a, b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let nats = NatsServer::start(a.path()).await.unwrap();
    let err = NatsServer::start_on(b.path(), nats.port())
        .await
        .err()
        .expect("adopted another nats-server");
    assert!(err.to_string().contains("address already in use"), "{err}");

    let (c, d) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let pg = Postgres::start_from_template(c.path()).await.unwrap();
    let err = Postgres::start_on(d.path(), pg.port(), true)
        .await
        .err()
        .expect("adopted another postgres");
    assert!(err.to_string().contains("Address already in use"), "{err}");
}
