//! Real child processes for end-to-end tests: spawn a service binary, wait until it is ready,
//! SIGKILL it, restart it, read its log.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago, for a service a test starts later.
///
/// Not from the kernel's ephemeral range (`bind(0)`): those ports are also handed out as the
/// local ports of outgoing connections, so a port released by `bind(0)` can be taken by some
/// client socket before the service binds it (seen as "Address already in use" under load).
/// Ports come from 20000–32767 instead, each handed out once per test process, starting at a
/// point derived from the process id so that concurrent test processes rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 7919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN - 1)
}

/// How to start a service binary.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// A URL that answers 2xx once the service is ready (its `/readyz`); `None`: ready when
    /// spawned.
    pub ready_url: Option<String>,
    pub ready_timeout: Duration,
    /// Where stdout and stderr go (appended, across restarts).
    pub log_path: PathBuf,
}

impl ServiceSpec {
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, log_dir: &Path) -> Self {
        let name = name.into();
        ServiceSpec {
            log_path: log_dir.join(format!("{name}.log")),
            name,
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            ready_url: None,
            ready_timeout: Duration::from_secs(60),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn ready_url(mut self, url: impl Into<String>) -> Self {
        self.ready_url = Some(url.into());
        self
    }
}

/// A running (or stopped) service process. Dropping it SIGKILLs the process.
#[derive(Debug)]
pub struct Service {
    spec: ServiceSpec,
    child: Option<Child>,
    starts: u32,
}

/// Why a service did not come up; the log's tail is in the error, where a test's failure shows it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{service}: {what}: {source}")]
    Io {
        service: String,
        what: String,
        source: std::io::Error,
    },
    #[error("{service} exited with {status} before it was ready; log tail:\n{log_tail}")]
    Exited {
        service: String,
        status: ExitStatus,
        log_tail: String,
    },
    #[error("{service} was not ready at {url} within {within:?}; log tail:\n{log_tail}")]
    NotReady {
        service: String,
        url: String,
        within: Duration,
        log_tail: String,
    },
}

impl Service {
    /// Spawns the binary and waits until its ready URL answers 2xx. Fails with the tail of its
    /// log if it exits first or is not ready in time.
    pub async fn start(spec: ServiceSpec) -> Result<Service, StartError> {
        let mut service = Service {
            spec,
            child: None,
            starts: 0,
        };
        service.spawn_and_wait().await?;
        Ok(service)
    }

    async fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log_path)
            .map_err(|e| self.io(format!("opening {}", self.spec.log_path.display()), e))?;
        self.starts += 1;
        writeln!(
            log,
            "----- testkit: start #{} of {} -----",
            self.starts, self.spec.name
        )
        .ok();
        let stderr = log
            .try_clone()
            .map_err(|e| self.io("sharing its log".into(), e))?;
        let child = Command::new(&self.spec.program)
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| self.io(format!("spawning {}", self.spec.program.display()), e))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), StartError> {
        let Some(url) = self.spec.ready_url.clone() else {
            return Ok(());
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| self.io("an HTTP client".into(), std::io::Error::other(e)))?;
        let deadline = Instant::now() + self.spec.ready_timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Err(StartError::Exited {
                    service: self.spec.name.clone(),
                    status,
                    log_tail: self.log_tail(40),
                });
            }
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(StartError::NotReady {
                    service: self.spec.name.clone(),
                    url,
                    within: self.spec.ready_timeout,
                    log_tail: self.log_tail(40),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn io(&self, what: String, source: std::io::Error) -> StartError {
        StartError::Io {
            service: self.spec.name.clone(),
            what,
            source,
        }
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// SIGKILL: the process gets no chance to clean up, as in a crash. Waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for a clean exit (SIGKILL after that). Returns the exit
    /// status, or `None` if it had to be killed or was not running.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the process again with the same spec (after [`Service::kill`] or a crash) and
    /// waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), StartError> {
        self.kill();
        self.spawn_and_wait().await
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.spec.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
