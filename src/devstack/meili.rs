use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use store::search::meili::{Meili, MeiliConfig, DEFAULT_INDEX};

use super::{free_port, log_tail, open_log, prepare_dir, signal, wait_child};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_FILE: &str = "meilisearch.log";

/// A `meilisearch` child process listening on 127.0.0.1 with a random master key.
///
/// Output goes to `DATA_DIR/meilisearch.log`, the database to `DATA_DIR/data.ms`. The
/// process is killed when this is dropped.
pub struct MeiliServer {
    child: Child,
    bin: PathBuf,
    data_dir: PathBuf,
    port: u16,
    key: String,
    exited: bool,
}

impl MeiliServer {
    /// The binary to run: `MEILI_BIN`, else `meilisearch` on PATH; `None` when neither exists.
    pub fn binary() -> Option<PathBuf> {
        match std::env::var_os("MEILI_BIN").filter(|v| !v.is_empty()) {
            Some(bin) => Some(PathBuf::from(bin)),
            None => super::find_on_path("meilisearch"),
        }
    }

    /// Starts Meilisearch on a free port with its data in `data_dir`, and waits until it is
    /// healthy.
    pub async fn start(bin: &Path, data_dir: &Path) -> anyhow::Result<MeiliServer> {
        let key = uuid::Uuid::new_v4().simple().to_string();
        Self::launch(bin, data_dir, free_port()?, key).await
    }

    /// Starts it again on the same port, key and data after it stopped or was killed.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.exited, "meilisearch is still running");
        *self = Self::launch(
            &self.bin.clone(),
            &self.data_dir.clone(),
            self.port,
            self.key.clone(),
        )
        .await?;
        Ok(())
    }

    async fn launch(
        bin: &Path,
        data_dir: &Path,
        port: u16,
        key: String,
    ) -> anyhow::Result<MeiliServer> {
        anyhow::ensure!(bin.is_file(), "{} does not exist", bin.display());
        let data_dir = prepare_dir(data_dir)?;
        let log_path = data_dir.join(LOG_FILE);
        let (log, offset) = open_log(&log_path)?;
        let stderr = log.try_clone()?;
        let child = Command::new(bin)
            .arg("--db-path")
            .arg(data_dir.join("data.ms"))
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--master-key", &key])
            .args(["--env", "development", "--no-analytics"])
            .current_dir(&data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            // Own process group: Ctrl-C stops it only when the parent shuts down in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let mut server = MeiliServer {
            child,
            bin: bin.to_owned(),
            data_dir,
            port,
            key,
            exited: false,
        };
        let probe = Meili::from_config(&server.config(DEFAULT_INDEX))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                server.exited = true;
                return Err(anyhow!(
                    "meilisearch exited during startup ({status}); log {}:\n{}",
                    log_path.display(),
                    log_tail(&log_path, offset, 20)
                ));
            }
            if probe.health().await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "meilisearch was not healthy within {} s; log {}:\n{}",
                    START_TIMEOUT.as_secs(),
                    log_path.display(),
                    log_tail(&log_path, offset, 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(pid = server.child.id(), port, "meilisearch started");
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How Tracely reaches this server, keeping incidents in `index`.
    pub fn config(&self, index: &str) -> MeiliConfig {
        MeiliConfig {
            url: self.url(),
            key: Some(self.key.clone()),
            index: index.to_owned(),
        }
    }

    /// SIGTERM, then SIGKILL if still running after 10 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shut_down().await
    }

    pub async fn shut_down(&mut self) -> anyhow::Result<()> {
        if self.exited {
            return Ok(());
        }
        signal(self.child.id(), libc::SIGTERM);
        if wait_child(&mut self.child, STOP_TIMEOUT).await.is_none() {
            self.kill();
        }
        self.exited = true;
        Ok(())
    }

    /// SIGKILL now and reap.
    pub fn kill(&mut self) {
        if self.exited {
            return;
        }
        signal(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
        self.exited = true;
    }
}

impl Drop for MeiliServer {
    fn drop(&mut self) {
        self.kill();
    }
}
