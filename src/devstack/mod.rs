//! Local infrastructure as child processes: a JetStream-enabled nats-server,
//! a private Postgres cluster and, when its binary is present, Meilisearch. Used by `tracely dev` and by integration
//! tests, which each start their own servers on free ports.

mod meili;
mod nats;
mod postgres;

pub use meili::MeiliServer;
pub use nats::NatsServer;
pub use postgres::Postgres;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A port that was free a moment ago. Another process may still take it
/// before we bind, so callers retry on "address in use".
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Sends `sig` to `pid`; false if the process does not exist.
fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Fields of /proc/PID/stat after the command name: (state, ppid).
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// SIGSTOP `pid` and wait (up to 1s) until every thread is stopped: kill(2)
/// returns before other CPUs have stopped the threads they are running.
fn stop_process(pid: u32) {
    if !signal(pid, libc::SIGSTOP) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let all_stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("stat"))
                        .ok()
                        .and_then(|s| {
                            let rest = &s[s.rfind(')')? + 1..];
                            rest.split_whitespace()
                                .next()
                                .map(|st| st == "T" || st == "t")
                        })
                        // A vanished thread cannot run.
                        .unwrap_or(true)
                })
            })
            .unwrap_or(true);
        if all_stopped {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether `pid` is a running process. Zombies count as gone: an orphan's
/// zombie may never be reaped in a container without a proper init.
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(raw, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !matches!(proc_stat(pid), Some(('Z', _)))
}

/// The kernel's short command name of `pid`.
fn proc_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// All descendants of `pid`. Postgres children call setsid(), so a process
/// group signal would not reach them.
fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((_, ppid)) = proc_stat(child) {
                children.entry(ppid).or_default().push(child);
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = VecDeque::from([pid]);
    while let Some(p) = queue.pop_front() {
        for &c in children.get(&p).into_iter().flatten() {
            out.push(c);
            queue.push_back(c);
        }
    }
    out
}

/// Polls until the child exits or `timeout` passes. Polling keeps a plain
/// std `Child`, which `Drop` can reap synchronously.
async fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops a process that is not our child (left over from a killed run):
/// `sig`, then SIGKILL for it and its descendants after `timeout`.
async fn stop_foreign(pid: u32, sig: libc::c_int, timeout: Duration) {
    let family = descendants(pid);
    signal(pid, sig);
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if pid_alive(pid) {
        tracing::warn!(pid, "process did not stop in time; killing it");
        signal(pid, libc::SIGKILL);
        for p in family {
            signal(p, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid_alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Opens `path` for appending a child's output; returns the file and the
/// offset where this run's output starts.
fn open_log(path: &Path) -> anyhow::Result<(File, u64)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
    let offset = file.metadata()?.len();
    Ok((file, offset))
}

/// The last `lines` lines written to `path` after `offset`.
fn log_tail(path: &Path, offset: u64, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        text = String::from_utf8_lossy(&buf).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.trim().is_empty() {
        "(no output)".to_owned()
    } else {
        tail
    }
}

/// Finds an executable named `name` on PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Absolute form of `path`, created if missing.
fn prepare_dir(path: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    std::fs::create_dir_all(&abs)
        .map_err(|e| anyhow::anyhow!("cannot create directory {}: {e}", abs.display()))?;
    Ok(abs)
}
