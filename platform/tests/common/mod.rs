//! What the README tour and the labs share: a free port offset, and the one-command platform
//! started in a folder of its own and waited for until it says it is running.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An offset under which the services' ports and `extra` ports are all free.
pub fn free_offset(extra: &[u16]) -> u16 {
    loop {
        let offset = 1_000 + rand::random::<u16>() % 14_000;
        let mut ports = vec![8080u16, 8081, 8082, 8090, 50050, 50051, 50052, 50053];
        ports.extend_from_slice(extra);
        if ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p + offset)).is_ok())
        {
            return offset;
        }
    }
}

/// `root/target/release/platform ARGS` run in `root`, once its banner says it is running
/// (within two minutes, or the test fails with what it printed).
pub fn start_platform(root: &Path, args: &[&str]) -> Child {
    let mut platform = Command::new(root.join("target/release/platform"))
        .args(args)
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = platform.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut banner = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let running = line.starts_with("tcc-pay is running");
                banner.push(line);
                if running {
                    return platform;
                }
            }
            Err(_) if Instant::now() > deadline => {
                let _ = platform.kill();
                panic!("the platform did not start: {banner:#?}");
            }
            Err(_) => assert!(
                platform.try_wait().unwrap().is_none(),
                "the platform exited: {banner:#?}"
            ),
        }
    }
}
