//! A real llama.cpp `llama-server` for the tests of `generator.backend: openai`: started on a
//! free 127.0.0.1 port with the embedded GGUF, killed when dropped. The binary is built once by
//! `scripts/build-llama-server.sh` into `$LOGO_CACHE/llama.cpp/bin/llama-server`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The model id the harness serves the GGUF under (`llama-server --alias`).
pub const ALIAS: &str = "smollm2";

/// `$LOGO_CACHE/llama.cpp/bin/llama-server`, if built.
pub fn llama_server_binary() -> Option<PathBuf> {
    let p = logo_schemas::paths::cache_dir().join("llama.cpp/bin/llama-server");
    p.is_file().then_some(p)
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// A plain HTTP/1.1 `GET path` to 127.0.0.1:`port`: `(status, body)`, or `None` when
/// nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().expect("socket address"),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Some((status, body.to_string()))
}

/// A running `llama-server` (killed on drop).
#[derive(Debug)]
pub struct LlamaServer {
    child: Option<Child>,
    bin: PathBuf,
    args: Vec<String>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its stderr and stdout, appended across restarts.
    pub log: PathBuf,
}

impl LlamaServer {
    /// Starts `bin` serving `model` as [`ALIAS`] on a free port with `extra` arguments (e.g.
    /// `["--parallel", "2"]`), logging to `log`, and waits until `/health` answers 200.
    /// Panics when it does not within 60 s.
    pub fn start(bin: &Path, model: &Path, extra: &[&str], log: &Path) -> Self {
        let mut server = Self::stopped(bin, model, extra, log);
        server.restart();
        server
    }

    /// As [`LlamaServer::start`], but not started yet: [`LlamaServer::restart`] starts it
    /// on [`LlamaServer::port`] (a client can be pointed at it first).
    pub fn stopped(bin: &Path, model: &Path, extra: &[&str], log: &Path) -> Self {
        let port = free_port();
        let mut args: Vec<String> = [
            "-m",
            model.to_str().expect("UTF-8 model path"),
            "--host",
            "127.0.0.1",
            "--alias",
            ALIAS,
            "--threads",
            "1",
            "--metrics",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self {
            child: None,
            bin: bin.to_path_buf(),
            args,
            port,
            log: log.to_path_buf(),
        }
    }

    /// The base URL, `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port (after [`LlamaServer::kill`]) and waits for
    /// `/health`.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .args(["--port", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("llama-server starts");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some((200, _)) = http_get(self.port, "/health") {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "llama-server exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "llama-server did not become healthy in 60 s: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (SIGKILL) and waits for it; a no-op when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A counter of `/metrics` (Prometheus text, e.g. `llamacpp:tokens_predicted_total`),
    /// or `None` when the server does not answer or lacks it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = http_get(self.port, "/metrics")?;
        if status != 200 {
            return None;
        }
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}
