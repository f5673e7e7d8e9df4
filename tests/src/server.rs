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
    let p = logo_env::paths::cache_dir().join("llama.cpp/bin/llama-server");
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

/// Debian's `nginx` (package `nginx-light` or `nginx`), if installed (`.ci/run` installs it).
pub fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// nginx as the gateway users put in front of inference servers, on a free 127.0.0.1 port,
/// proxying to `upstream_port`: `POST /v1/completions` is rate-limited (`limit_req`, at most
/// `per_minute` requests a minute, no burst) and answered over the limit with 429 and
/// `Retry-After: {retry_after_s}`; while the upstream is down nginx itself answers 502. Every
/// completion request is logged as `{status} {request line}` (see [`Nginx::statuses`]).
/// Stopped on drop.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: PathBuf,
}

impl Nginx {
    /// Writes `dir/nginx.conf` and starts `bin` in the foreground; waits until it accepts
    /// connections. Panics when it does not within 10 s.
    pub fn start(
        bin: &Path,
        dir: &Path,
        upstream_port: u16,
        per_minute: u32,
        retry_after_s: u32,
    ) -> Self {
        let port = free_port();
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx folder");
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\nhttp {{\n\
             client_body_temp_path {d}/tmp/body;\nproxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\nuwsgi_temp_path {d}/tmp/uwsgi;\n\
             scgi_temp_path {d}/tmp/scgi;\n\
             log_format status '$status $request';\naccess_log {d}/completions.log status if=$completion;\n\
             map $uri $completion {{ /v1/completions 1; default 0; }}\n\
             map $status $retry_after {{ 429 {retry_after_s}; default \"\"; }}\n\
             limit_req_zone $binary_remote_addr zone=completions:1m rate={per_minute}r/m;\n\
             limit_req_status 429;\n\
             server {{\n  listen 127.0.0.1:{port};\n\
               location = /v1/completions {{\n    limit_req zone=completions;\n\
                 add_header Retry-After $retry_after always;\n\
                 proxy_pass http://127.0.0.1:{upstream_port};\n    proxy_read_timeout 600s;\n  }}\n\
               location / {{ proxy_pass http://127.0.0.1:{upstream_port}; }}\n}}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new(bin)
            .args(["-p", &dir.display().to_string(), "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut gateway = Nginx {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("nginx exited with {status}: {}", gateway.error_log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx did not listen in 10 s: {}",
                gateway.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gateway
    }

    /// The base URL, `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The HTTP status of every completion request answered so far, in order.
    pub fn statuses(&self) -> Vec<u16> {
        std::fs::read_to_string(self.dir.join("completions.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request and its answer as [`RecordingProxy`] passed them on.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// `POST`, `GET`, ...
    pub method: String,
    /// The request path, e.g. `/v1/completions`.
    pub path: String,
    /// The request body (UTF-8, lossy).
    pub request: String,
    /// The answer's status code.
    pub status: u16,
    /// The answer's body (UTF-8, lossy; a chunked body de-chunked).
    pub response: String,
}

/// A transparent HTTP/1.1 reverse proxy on a free 127.0.0.1 port in front of a server on
/// 127.0.0.1:`upstream`, recording every exchange (each request goes upstream on a fresh
/// connection; the answer is passed back unchanged but re-framed with `Content-Length`). Its
/// threads live as long as the test process.
#[derive(Debug)]
pub struct RecordingProxy {
    /// The port it listens on.
    pub port: u16,
    exchanges: std::sync::Arc<std::sync::Mutex<Vec<Exchange>>>,
}

impl RecordingProxy {
    /// Starts the proxy. Panics when it cannot bind.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let exchanges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = exchanges.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = proxy_connection(conn, upstream, &log);
                });
            }
        });
        Self { port, exchanges }
    }

    /// The base URL, `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every exchange so far, in the order the answers came back.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.exchanges.lock().expect("proxy log").clone()
    }
}

/// Reads one HTTP/1.1 message: its start line, headers `(name lower-cased, value)` and body
/// (`Content-Length`, chunked, or, with `to_eof`, everything to the end of the stream).
/// `Ok(None)` at a clean end of stream.
#[allow(clippy::type_complexity)]
fn read_message(
    r: &mut impl std::io::BufRead,
    to_eof: bool,
) -> std::io::Result<Option<(String, Vec<(String, String)>, Vec<u8>)>> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(n) = header("content-length") {
        body.resize(n.parse().unwrap_or(0), 0);
        r.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if to_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(Some((start.trim_end().to_string(), headers, body)))
}

/// Serves one client connection of [`RecordingProxy`] until the client closes it.
fn proxy_connection(
    conn: TcpStream,
    upstream: u16,
    log: &std::sync::Mutex<Vec<Exchange>>,
) -> std::io::Result<()> {
    let mut client = std::io::BufReader::new(conn.try_clone()?);
    let mut out = conn;
    while let Some((start, headers, body)) = read_message(&mut client, false)? {
        let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
        let mut head = format!("{start}\r\n");
        for (k, v) in headers
            .iter()
            .filter(|(k, _)| k != "connection" && k != "content-length")
        {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        ));
        up.write_all(head.as_bytes())?;
        up.write_all(&body)?;
        let mut reader = std::io::BufReader::new(up);
        let Some((status_line, rheaders, rbody)) = read_message(&mut reader, true)? else {
            return Ok(());
        };
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut parts = start.split_whitespace();
        log.lock().expect("proxy log").push(Exchange {
            method: parts.next().unwrap_or_default().to_string(),
            path: parts.next().unwrap_or_default().to_string(),
            request: String::from_utf8_lossy(&body).into_owned(),
            status,
            response: String::from_utf8_lossy(&rbody).into_owned(),
        });
        let mut head = format!("{status_line}\r\n");
        for (k, v) in rheaders
            .iter()
            .filter(|(k, _)| k != "connection" && k != "content-length" && k != "transfer-encoding")
        {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", rbody.len()));
        out.write_all(head.as_bytes())?;
        out.write_all(&rbody)?;
    }
    Ok(())
}

/// A plain HTTP/1.1 `POST path` of the JSON `body` to 127.0.0.1:`port`: the answer's JSON.
/// Panics when nothing answers or the answer is not JSON.
pub fn http_post_json(port: u16, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).ok();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut r = std::io::BufReader::new(s);
    let (_, _, answer) = read_message(&mut r, true)
        .expect("read the answer")
        .expect("an answer");
    serde_json::from_slice(&answer).expect("a JSON answer")
}
