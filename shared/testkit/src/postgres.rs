//! Where test databases on PostgreSQL come from: `DATABASE_URL`, a throwaway local cluster, or a
//! container.

use sqlx::{Connection, Executor};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A PostgreSQL server this process may create databases on.
#[derive(Debug)]
struct Server {
    /// URL of a database to connect to for `CREATE DATABASE` (the path is replaced per test).
    admin_url: String,
    /// What it is, for messages.
    source: String,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

fn server() -> &'static Result<Server, String> {
    SERVER.get_or_init(|| {
        // Found on a plain thread: the container runner starts its own runtime, which may not
        // be nested inside the test's.
        std::thread::spawn(find_server)
            .join()
            .unwrap_or_else(|_| Err("finding a PostgreSQL server panicked".into()))
    })
}

/// Whether PostgreSQL tests can run here, and if not, why not.
pub fn postgres_available() -> Result<String, String> {
    server()
        .as_ref()
        .map(|s| s.source.clone())
        .map_err(Clone::clone)
}

/// Creates a uniquely named, empty database and returns its URL.
pub(crate) async fn create_database() -> Result<String, String> {
    let server = server().as_ref().map_err(Clone::clone)?;
    let name = crate::unique_name("t");
    let mut conn = sqlx::PgConnection::connect(&server.admin_url)
        .await
        .map_err(|e| format!("connect to {}: {e}", server.source))?;
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .map_err(|e| format!("CREATE DATABASE on {}: {e}", server.source))?;
    conn.close().await.ok();
    Ok(with_database(&server.admin_url, &name))
}

fn find_server() -> Result<Server, String> {
    let mut reasons = Vec::new();
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if url.starts_with("postgres") {
            return Ok(Server {
                source: format!("DATABASE_URL ({})", redact(&url)),
                admin_url: url,
            });
        }
        reasons.push("DATABASE_URL is not a postgres:// URL".to_owned());
    }
    match local_cluster() {
        Ok(server) => return Ok(server),
        Err(e) => reasons.push(format!("local cluster: {e}")),
    }
    match container() {
        Ok(server) => return Ok(server),
        Err(e) => reasons.push(format!("testcontainers: {e}")),
    }
    Err(reasons.join("; "))
}

/// Replaces the database name (the URL path) of a PostgreSQL URL.
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// The folder with `initdb` and `postgres`: `PG_BIN`, the newest `/usr/lib/postgresql/*/bin`,
/// or `PATH`.
fn pg_bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .find(|p| p.join("initdb").exists() && p.join("postgres").exists())
        })
        .ok_or_else(|| "no initdb found (set PG_BIN, or install postgresql)".to_owned())
}

/// The user to run PostgreSQL as: ourselves, or `postgres` when we are root.
fn pg_user() -> Result<Option<nix::unistd::User>, String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    nix::unistd::User::from_name("postgres")
        .map_err(|e| format!("look up the postgres user: {e}"))?
        .map(Some)
        .ok_or_else(|| {
            "running as root and there is no `postgres` user to run initdb as".to_owned()
        })
}

fn as_user(cmd: &mut Command, user: &Option<nix::unistd::User>) {
    use std::os::unix::process::CommandExt;
    if let Some(u) = user {
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
}

fn local_cluster() -> Result<Server, String> {
    let bin = pg_bin_dir()?;
    let user = pg_user()?;
    let dir = tempfile::Builder::new()
        .prefix("testkit-pg-")
        .tempdir()
        .map_err(|e| format!("temporary folder: {e}"))?
        .keep();
    let cleanup_now = |e: String| {
        let _ = std::fs::remove_dir_all(&dir);
        e
    };
    if let Some(u) = &user {
        std::os::unix::fs::chown(&dir, Some(u.uid.as_raw()), Some(u.gid.as_raw()))
            .map_err(|e| cleanup_now(format!("chown {}: {e}", dir.display())))?;
    }
    let data = dir.join("data");
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .current_dir(&dir);
    as_user(&mut initdb, &user);
    let out = initdb
        .output()
        .map_err(|e| cleanup_now(format!("run initdb: {e}")))?;
    if !out.status.success() {
        return Err(cleanup_now(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }

    // The port is free when we look; another process may take it before postgres binds it, so
    // try a few.
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = crate::free_port();
        match start_postgres(&bin, &user, &dir, &data, port) {
            Ok(pid) => {
                spawn_watchdog(pid, &dir)?;
                return Ok(Server {
                    admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                    source: format!("local cluster in {} on port {port}", dir.display()),
                });
            }
            Err(e) => last_error = e,
        }
    }
    Err(cleanup_now(last_error))
}

/// Starts `postgres` and waits until it accepts connections; returns its pid.
fn start_postgres(
    bin: &Path,
    user: &Option<nix::unistd::User>,
    dir: &Path,
    data: &Path,
    port: u16,
) -> Result<u32, String> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.join("postgres.log")).map_err(|e| e.to_string())?;
    if let Some(u) = user {
        std::os::unix::fs::chown(
            dir.join("postgres.log"),
            Some(u.uid.as_raw()),
            Some(u.gid.as_raw()),
        )
        .ok();
    }
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            // Throwaway data: durability against power loss buys nothing here. SIGKILL of a
            // service under test does not need fsync either.
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=400",
            "-c",
            "shared_buffers=64MB",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: a Ctrl-C at the terminal must not kill it before the watchdog
        // has cleaned up.
        .process_group(0);
    as_user(&mut cmd, user);
    let mut child = cmd.spawn().map_err(|e| format!("start postgres: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
            return Err(format!("postgres exited with {status}: {}", log.trim()));
        }
        let ready = Command::new(bin.join("pg_isready"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            return Ok(child.id());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("postgres did not become ready within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A small shell process that outlives us: when this test process is gone (normal exit, panic
/// or SIGKILL) it stops the cluster and removes its folder.
fn spawn_watchdog(postgres_pid: u32, dir: &Path) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        kill -QUIT "$2" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$2" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$2" 2>/dev/null
        rm -rf "$3"
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("testkit-pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(postgres_pid.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("start the cluster watchdog: {e}"))
}

fn container() -> Result<Server, String> {
    use testcontainers::runners::SyncRunner;
    let socket = std::env::var("DOCKER_HOST").ok();
    if socket.is_none() && !Path::new("/var/run/docker.sock").exists() {
        return Err("no Docker daemon (no DOCKER_HOST, no /var/run/docker.sock)".into());
    }
    let container = testcontainers_modules::postgres::Postgres::default()
        .start()
        .map_err(|e| format!("start a postgres container: {e}"))?;
    let host = container.get_host().map_err(|e| e.to_string())?;
    let port = container
        .get_host_port_ipv4(5432)
        .map_err(|e| e.to_string())?;
    // Kept for the life of the process; the testcontainers reaper removes it afterwards.
    static CONTAINER: OnceLock<
        testcontainers::Container<testcontainers_modules::postgres::Postgres>,
    > = OnceLock::new();
    let _ = CONTAINER.set(container);
    Ok(Server {
        admin_url: format!("postgres://postgres:postgres@{host}:{port}/postgres"),
        source: format!("testcontainers postgres on {host}:{port}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_of_a_url_is_replaced_and_the_query_kept() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "t_1"),
            "postgres://u:p@h:5432/t_1"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "t_2"),
            "postgres://u@h/t_2?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t_3"), "postgres://u@h/t_3");
    }
}
