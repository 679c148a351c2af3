use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use sqlx::Connection;

use super::{
    descendants, free_port, log_tail, open_log, pid_alive, prepare_dir, proc_comm, signal,
    stop_foreign, stop_process, wait_child,
};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Server output, appended across runs. Kept inside the data directory so
/// that nothing is written next to a caller's directory.
const LOG_FILE: &str = "postgres.log";
const SUPERUSER: &str = "postgres";

/// A private Postgres cluster run as a child process on 127.0.0.1 (TCP
/// only: Unix sockets are disabled to avoid socket path limits and clashes).
///
/// Connections use trust auth as user `postgres`. Server output goes to
/// `DATA_DIR/postgres.log`. The server is killed when this is dropped.
pub struct Postgres {
    child: Child,
    port: u16,
    data_dir: PathBuf,
    exited: bool,
}

struct LaunchError {
    error: anyhow::Error,
    port_in_use: bool,
}

impl From<anyhow::Error> for LaunchError {
    fn from(error: anyhow::Error) -> Self {
        Self {
            error,
            port_in_use: false,
        }
    }
}

/// The OS account the server runs as when we are root.
#[derive(Clone, Copy)]
struct Account {
    uid: u32,
    gid: u32,
}

impl Postgres {
    /// Starts a cluster in `data_dir` on a free port, creating it with initdb
    /// first if `data_dir` has no PG_VERSION. `fast` trades durability for
    /// speed (fsync, synchronous_commit and full_page_writes off): tests only.
    pub async fn start(data_dir: &Path, fast: bool) -> anyhow::Result<Self> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::launch(data_dir, free_port()?, fast).await {
                Ok(pg) => return Ok(pg),
                // The free port can be taken between probing and binding.
                Err(e) if e.port_in_use && attempts < 3 => continue,
                Err(e) => return Err(e.error),
            }
        }
    }

    /// Same as [`Postgres::start`] on a given port, e.g. to restart a killed
    /// server where its clients expect it.
    pub async fn start_on(data_dir: &Path, port: u16, fast: bool) -> anyhow::Result<Self> {
        Self::launch(data_dir, port, fast)
            .await
            .map_err(|e| e.error)
    }

    /// For tests: fills an empty `data_dir` with a copy of a cluster created
    /// once per process (initdb is slow), then starts it with `fast` on.
    pub async fn start_from_template(data_dir: &Path) -> anyhow::Result<Self> {
        let data_dir = prepare_dir(data_dir)?;
        if !data_dir.join("PG_VERSION").exists() {
            let template = template_dir().await?;
            let out = tokio::process::Command::new("cp")
                .arg("-a")
                .arg(template.join("."))
                .arg(&data_dir)
                .output()
                .await
                .context("cannot run cp")?;
            if !out.status.success() {
                bail!(
                    "copying the Postgres template into {} failed: {}",
                    data_dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Self::start(&data_dir, true).await
    }

    async fn launch(data_dir: &Path, port: u16, fast: bool) -> Result<Self, LaunchError> {
        let bin_dir = bin_dir()?;
        let account = server_account()?;
        let data_dir = prepare_dir(data_dir)?;
        own_data_dir(&data_dir, account)?;
        if !data_dir.join("PG_VERSION").exists() {
            initdb(&bin_dir, &data_dir, account, fast).await?;
        }
        stop_stale_postmaster(&data_dir).await;

        let log_path = data_dir.join(LOG_FILE);
        let (log, offset) = open_log(&log_path)?;
        let stderr = log.try_clone().map_err(anyhow::Error::from)?;
        let mut cmd = Command::new(bin_dir.join("postgres"));
        cmd.arg("-D")
            .arg(&data_dir)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k", ""]);
        if fast {
            for setting in [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ] {
                cmd.args(["-c", setting]);
            }
        }
        as_account(&mut cmd, account);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            // Own process group: a terminal's Ctrl-C must not stop the server
            // before the parent has shut down in order.
            .process_group(0)
            .spawn()
            .context("cannot run postgres")?;

        let mut pg = Self {
            child,
            port,
            data_dir,
            exited: false,
        };
        let url = pg.url(SUPERUSER);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = pg.child.try_wait() {
                pg.exited = true;
                let tail = log_tail(&log_path, offset, 30);
                return Err(LaunchError {
                    port_in_use: tail.contains("Address already in use"),
                    error: anyhow!(
                        "postgres exited during startup ({status}) on port {port}; log {}:\n{tail}",
                        log_path.display()
                    ),
                });
            }
            let attempt =
                tokio::time::timeout(Duration::from_secs(2), sqlx::PgConnection::connect(&url))
                    .await;
            let last_error = match attempt {
                Ok(Ok(mut conn)) => {
                    // Another server may answer on the port until ours fails to bind it.
                    let dir: Result<String, _> = sqlx::query_scalar("SHOW data_directory")
                        .fetch_one(&mut conn)
                        .await;
                    let _ = conn.close().await;
                    match dir {
                        Ok(dir) if same_dir(Path::new(&dir), &pg.data_dir) => break,
                        Ok(dir) => format!("port {port} is served by the cluster in {dir}"),
                        Err(e) => e.to_string(),
                    }
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "connect timed out".to_owned(),
            };
            if Instant::now() >= deadline {
                pg.kill();
                let tail = log_tail(&log_path, offset, 30);
                return Err(anyhow!(
                    "postgres did not accept connections on port {port} within {}s \
                     (last error: {last_error}); log {}:\n{tail}",
                    START_TIMEOUT.as_secs(),
                    log_path.display()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(pid = pg.pid(), port, data_dir = %pg.data_dir.display(), "postgres started");
        Ok(pg)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// URL of a database on this server: `postgres://postgres@127.0.0.1:PORT/NAME`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates database `name` unless it exists; returns its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let mut conn = sqlx::PgConnection::connect(&self.url(SUPERUSER))
            .await
            .context("cannot connect to the postgres database")?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
            match sqlx::query(&sql).execute(&mut conn).await {
                Ok(_) => {}
                // Lost a race with a concurrent creator: fine.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(e).with_context(|| format!("CREATE DATABASE {name}")),
            }
        }
        let _ = conn.close().await;
        Ok(self.url(name))
    }

    /// Fast shutdown (SIGINT), then SIGKILL if still running after 10s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shut_down().await
    }

    /// [`Postgres::stop`] keeping the handle, so that [`Postgres::restart`] can bring the same
    /// server back.
    pub async fn shut_down(&mut self) -> anyhow::Result<()> {
        if self.exited {
            return Ok(());
        }
        // A paused server would never see SIGINT.
        self.resume();
        signal(self.pid(), libc::SIGINT);
        if wait_child(&mut self.child, STOP_TIMEOUT).await.is_none() {
            tracing::warn!(
                pid = self.pid(),
                "postgres ignored fast shutdown; killing it"
            );
            self.kill();
        }
        self.exited = true;
        Ok(())
    }

    /// Starts the server again on the same port and data directory after it stopped or was
    /// killed; `fast` as in [`Postgres::start`].
    pub async fn restart(&mut self, fast: bool) -> anyhow::Result<()> {
        anyhow::ensure!(self.exited, "Postgres is still running");
        *self = Self::start_on(&self.data_dir.clone(), self.port, fast).await?;
        Ok(())
    }

    /// SIGKILL the server and all its processes now, to simulate a crash.
    /// Killing the backends too lets a restart reuse the data directory at once.
    pub fn kill(&mut self) {
        if self.exited {
            return;
        }
        let pid = self.pid();
        let family = descendants(pid);
        signal(pid, libc::SIGKILL);
        for p in family {
            signal(p, libc::SIGKILL);
        }
        let _ = self.child.wait();
        self.exited = true;
    }

    /// SIGSTOP the server and its backends: connections hang, like a stalled host.
    pub fn pause(&self) {
        if self.exited {
            return;
        }
        // Postmaster first, so it forks no new backends meanwhile.
        stop_process(self.pid());
        for p in descendants(self.pid()) {
            stop_process(p);
        }
    }

    /// SIGCONT after [`Postgres::pause`].
    pub fn resume(&self) {
        if self.exited {
            return;
        }
        for p in descendants(self.pid()) {
            signal(p, libc::SIGCONT);
        }
        signal(self.pid(), libc::SIGCONT);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        // Immediate shutdown: no checkpoint, but the postmaster reaps its
        // backends. After a SIGKILL they would be left to init, which in a
        // container often never reaps them.
        self.resume();
        signal(self.pid(), libc::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.exited = true;
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill();
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Directory holding `initdb` and `postgres`: TRACELY_PG_BIN_DIR, else
/// `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("TRACELY_PG_BIN_DIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        anyhow::ensure!(
            has_server(&dir),
            "TRACELY_PG_BIN_DIR={} has no initdb and postgres binaries",
            dir.display()
        );
        return Ok(dir);
    }
    // pg_config may come from the client library alone, so check its answer.
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        anyhow!(
            "Postgres server binaries (initdb, postgres) not found; install them with \
             `make deps` (or `apt-get install postgresql`), or set TRACELY_PG_BIN_DIR"
        )
    })
}

/// Postgres refuses to run as root, so as root we run it as the `postgres`
/// OS user. None when we are not root.
fn server_account() -> anyhow::Result<Option<Account>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| {
            Some(Account {
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .map(Some)
        .ok_or_else(|| {
            anyhow!(
                "running as root, but Postgres cannot run as root and there is no `postgres` \
                 OS user; install the postgresql package (`make deps`) or run as another user"
            )
        })
}

fn as_account(cmd: &mut Command, account: Option<Account>) {
    if let Some(a) = account {
        cmd.uid(a.uid).gid(a.gid);
    }
    // The caller's working directory may be unreadable to that user.
    cmd.current_dir("/");
}

/// Gives the server's account a private data directory it can reach.
fn own_data_dir(data_dir: &Path, account: Option<Account>) -> anyhow::Result<()> {
    if let Some(a) = account {
        std::os::unix::fs::chown(data_dir, Some(a.uid), Some(a.gid))
            .with_context(|| format!("cannot chown {} to postgres", data_dir.display()))?;
    }
    // Postgres insists on 0700 (or 0750).
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    if account.is_some() {
        // Ask as that user: this covers every parent directory and its groups.
        let mut check = Command::new("/bin/sh");
        check
            .args(["-c", "test -x \"$1\" && test -w \"$1\"", "sh"])
            .arg(data_dir);
        as_account(&mut check, account);
        let reachable = check.status().map(|s| s.success()).unwrap_or(false);
        if !reachable {
            bail!(
                "the `postgres` OS user cannot reach {}: a parent directory is not \
                 traversable by it; choose another --data-dir (e.g. under /var/tmp or /srv)",
                data_dir.display()
            );
        }
    }
    Ok(())
}

async fn initdb(
    bin_dir: &Path,
    data_dir: &Path,
    account: Option<Account>,
    fast: bool,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(bin_dir.join("initdb"));
    cmd.arg("-D").arg(data_dir).args([
        "-U",
        SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    ]);
    if fast {
        cmd.arg("--no-sync");
    }
    as_account(&mut cmd, account);
    let out = tokio::process::Command::from(cmd)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run initdb")?;
    if !out.status.success() {
        bail!(
            "initdb {} failed ({}):\n{}{}",
            data_dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A server left running by a parent that was killed holds the data
/// directory's lock; stop it. A lock naming an unrelated process (pid
/// reuse) is removed, since Postgres would refuse to start over it.
async fn stop_stale_postmaster(data_dir: &Path) {
    let lock = data_dir.join("postmaster.pid");
    let Some(pid) = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
    else {
        return;
    };
    if !pid_alive(pid) {
        return;
    }
    if proc_comm(pid).as_deref() == Some("postgres") {
        tracing::warn!(pid, data_dir = %data_dir.display(), "stopping a postgres left over on this data directory");
        for p in descendants(pid) {
            signal(p, libc::SIGCONT);
        }
        signal(pid, libc::SIGCONT);
        stop_foreign(pid, libc::SIGINT, STOP_TIMEOUT).await;
    } else {
        let _ = std::fs::remove_file(&lock);
    }
}

/// Template cluster shared by this process's tests.
static TEMPLATE: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();

async fn template_dir() -> anyhow::Result<&'static PathBuf> {
    TEMPLATE
        .get_or_try_init(|| async {
            remove_stale_templates();
            let dir = std::env::temp_dir().join(format!("{TEMPLATE_PREFIX}{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let dir = prepare_dir(&dir)?;
            let account = server_account()?;
            own_data_dir(&dir, account)?;
            initdb(&bin_dir()?, &dir, account, true).await?;
            // SAFETY: registers a plain function with no arguments.
            unsafe { libc::atexit(remove_template) };
            Ok(dir)
        })
        .await
}

const TEMPLATE_PREFIX: &str = "tracely-pg-template-";

extern "C" fn remove_template() {
    if let Some(dir) = TEMPLATE.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes templates of test processes that died before their exit handler ran.
fn remove_stale_templates() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMPLATE_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
