//! Runs the real `switchyard` binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Broker {
    pub child: Child,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    /// The stderr lines up to and including the "ready" line.
    pub startup: Vec<String>,
    /// The stderr lines after it, as they come.
    pub lines: mpsc::Receiver<String>,
}

/// Starts `switchyard serve [-c config]` in `cwd` and waits (bounded) for it to be ready.
pub fn start(config: Option<&Path>, cwd: &Path, env: &[(&str, &str)]) -> Broker {
    start_under(&[], config, cwd, env)
}

/// Starts the binary on loopback ports with its data in `dir` and one subscription file
/// holding `subscription` (a whole document).
pub fn start_with_subscription(dir: &Path, subscription: &str, env: &[(&str, &str)]) -> Broker {
    let subs = dir.join("subs");
    std::fs::create_dir_all(&subs).unwrap();
    std::fs::write(subs.join("s.yaml"), subscription).unwrap();
    let config = dir.join("switchyard.yaml");
    std::fs::write(
        &config,
        format!(
            "ingress: {{ listen: '127.0.0.1:0' }}\nadmin: {{ listen: '127.0.0.1:0' }}\nstorage: {{ path: {} }}\nsubscriptions: [{}]\n",
            dir.join("data").display(),
            subs.display()
        ),
    )
    .unwrap();
    start(Some(&config), dir, env)
}

impl Broker {
    /// Posts a structured event over a connection of its own, with `headers` (`name:
    /// value` lines) beside the content type; the answer's status line and the rest.
    pub fn post_structured(&self, body: &str, headers: &[&str]) -> String {
        use std::io::{Read, Write};
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        let request = format!(
            "POST / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}content-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut s = std::net::TcpStream::connect(self.ingress).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }
}

/// As [`start`], run under `wrapper` (e.g. `strace -f -o FILE`), which must pass stderr
/// through.
pub fn start_under(
    wrapper: &[&str],
    config: Option<&Path>,
    cwd: &Path,
    env: &[(&str, &str)],
) -> Broker {
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let mut cmd = match wrapper.split_first() {
        None => Command::new(bin),
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            c
        }
    };
    cmd.arg("serve");
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    cmd.env_remove("SWITCHYARD_CONFIG");
    cmd.current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.env("SWITCHYARD_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("switchyard starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (ingress, admin, startup) = wait_ready(&lines);
    Broker {
        child,
        ingress,
        admin,
        startup,
        lines,
    }
}

/// A field of a log line, text (`name=value`) or JSON (`"fields": {"name": ...}`).
fn field(line: &str, name: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        return v["fields"][name].as_str()?.parse().ok();
    }
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    line[start..].split_whitespace().next()?.parse().ok()
}

fn wait_ready(lines: &mpsc::Receiver<String>) -> (SocketAddr, SocketAddr, Vec<String>) {
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("switchyard did not become ready; it said: {seen:#?}"));
        seen.push(line.clone());
        if line.contains("switchyard ready") {
            return (
                field(&line, "ingress").unwrap(),
                field(&line, "admin").unwrap(),
                seen,
            );
        }
    }
}

/// A broker a failed test leaves behind is killed, not left running.
impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Broker {
    /// SIGTERM, then wait for the exit; a failed exit prints what the broker said.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) with the pid of our own child and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        if !status.success() {
            for line in self.lines.try_iter() {
                eprintln!("broker: {line}");
            }
        }
        status
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}
