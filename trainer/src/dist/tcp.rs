//! The TCP backend: a star around rank 0, which listens on `MASTER_ADDR:MASTER_PORT`; the other
//! ranks connect and introduce themselves (rank, world size, pid, host). In an all-reduce,
//! every rank sends its buffer to rank 0, which sums them in rank order and sends the sum back
//! (fine for LoRA gradients, a few MB; NCCL moves the data on GPUs, see [`super::Nccl`]).
//!
//! A rank that exits closes its sockets, so its peers read end-of-file at once and fail with
//! "rank R (pid P on HOST) closed its connection"; a rank that stops answering is reported
//! after [`super::dist_timeout`]; a rank that stops on an error first sends it
//! ([`Collective::abort`]) and the others fail with that message. Rank 0's failure reaches the
//! others as end-of-file, so no rank is left waiting.
//!
//! Frames: tag (u8), length (u64 LE), payload. f32 values travel little-endian.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{Collective, DistEnv};
use crate::error::{Result, TrainerError};

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const DATA: u8 = 3;
const BYTES: u8 = 4;
const ABORT: u8 = 5;

fn op_name(tag: u8) -> &'static str {
    match tag {
        HELLO => "hello",
        WELCOME => "welcome",
        DATA => "all_reduce",
        BYTES => "broadcast",
        ABORT => "abort",
        _ => "unknown",
    }
}

struct Peer {
    rank: usize,
    stream: TcpStream,
    pid: u32,
    host: String,
}

impl Peer {
    fn describe(&self) -> String {
        format!("rank {} (pid {} on {})", self.rank, self.pid, self.host)
    }
}

/// One rank of a TCP group (see the module doc).
pub struct Tcp {
    rank: usize,
    world_size: usize,
    timeout: Duration,
    /// Rank 0: index r holds rank r (index 0 empty). Others: index 0 holds rank 0.
    peers: Vec<Option<Peer>>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

fn dist(message: String) -> TrainerError {
    TrainerError::Dist(message)
}

fn write_frame(stream: &mut TcpStream, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = tag;
    head[1..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    stream.write_all(&head)?;
    stream.write_all(payload)?;
    stream.flush()
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head)?;
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes")) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u32_at(bytes: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"))
}

impl Tcp {
    /// Forms the group of `env` (rank 0 listens, the others connect, retrying until `timeout`).
    /// Errors: [`TrainerError::Dist`]: rank 0 cannot listen on the port, a rank cannot reach
    /// rank 0, not every rank joined within `timeout` (the missing ranks are named), or a rank
    /// announced another world size.
    pub fn connect(env: &DistEnv, timeout: Duration) -> Result<Self> {
        let mut tcp = Tcp {
            rank: env.rank,
            world_size: env.world_size,
            timeout,
            peers: (0..env.world_size).map(|_| None).collect(),
        };
        let addr = format!("{}:{}", env.master_addr, env.master_port);
        let deadline = Instant::now() + timeout;
        if env.rank == 0 {
            let listener = TcpListener::bind(&addr)
                .or_else(|_| TcpListener::bind(("0.0.0.0", env.master_port)))
                .map_err(|e| {
                    dist(format!(
                        "rank 0 cannot listen on {addr}: {e} (choose another MASTER_PORT)"
                    ))
                })?;
            listener
                .set_nonblocking(true)
                .map_err(|e| dist(format!("rank 0: {e}")))?;
            let mut joined = 1;
            while joined < env.world_size {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let peer = tcp.welcome_peer(stream)?;
                        let r = peer.rank;
                        tcp.peers[r] = Some(peer);
                        joined += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            let missing: Vec<String> = (1..env.world_size)
                                .filter(|r| tcp.peers[*r].is_none())
                                .map(|r| r.to_string())
                                .collect();
                            return Err(dist(format!(
                                "rank 0: ranks {} did not connect to {addr} within {:.0} s",
                                missing.join(", "),
                                timeout.as_secs_f64()
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(dist(format!("rank 0: accept on {addr}: {e}"))),
                }
            }
            let me = format!("{}\n{}", std::process::id(), hostname());
            for r in 1..env.world_size {
                let peer = tcp.peers[r].as_mut().expect("joined");
                write_frame(&mut peer.stream, WELCOME, me.as_bytes())
                    .map_err(|e| dist(format!("rank 0: greeting {}: {e}", peer.describe())))?;
            }
        } else {
            let mut last_error = String::from("no address");
            let stream = loop {
                let addrs: Vec<_> = match addr.to_socket_addrs() {
                    Ok(a) => a.collect(),
                    Err(e) => {
                        last_error = e.to_string();
                        vec![]
                    }
                };
                let mut connected = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last_error = e.to_string(),
                    }
                }
                if let Some(s) = connected {
                    break s;
                }
                if Instant::now() > deadline {
                    return Err(dist(format!(
                        "rank {} could not connect to rank 0 at {addr} within {:.0} s: {last_error}",
                        env.rank,
                        timeout.as_secs_f64()
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let mut stream = stream;
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(timeout));
            let _ = stream.set_write_timeout(Some(timeout));
            let mut hello = Vec::new();
            for v in [env.rank as u32, env.world_size as u32, std::process::id()] {
                hello.extend(v.to_le_bytes());
            }
            hello.extend(hostname().as_bytes());
            write_frame(&mut stream, HELLO, &hello)
                .map_err(|e| dist(format!("rank {}: hello to rank 0: {e}", env.rank)))?;
            tcp.peers[0] = Some(Peer {
                rank: 0,
                stream,
                pid: 0,
                host: env.master_addr.clone(),
            });
            let payload = tcp.recv(0, WELCOME, "joining")?;
            let text = String::from_utf8_lossy(&payload).to_string();
            let (pid, host) = text.split_once('\n').unwrap_or(("0", "?"));
            let root = tcp.peers[0].as_mut().expect("set");
            root.pid = pid.parse().unwrap_or(0);
            root.host = host.to_string();
        }
        Ok(tcp)
    }

    /// Rank 0: reads a new connection's hello and checks it.
    fn welcome_peer(&self, mut stream: TcpStream) -> Result<Peer> {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(self.timeout.min(Duration::from_secs(30))));
        let (tag, payload) = read_frame(&mut stream)
            .map_err(|e| dist(format!("rank 0: a connecting rank sent no hello: {e}")))?;
        if tag != HELLO || payload.len() < 12 {
            return Err(dist(
                "rank 0: a connection that is not a logo-trainer rank (wrong MASTER_PORT?)".into(),
            ));
        }
        let (rank, world, pid) = (
            u32_at(&payload, 0) as usize,
            u32_at(&payload, 1) as usize,
            u32_at(&payload, 2),
        );
        let host = String::from_utf8_lossy(&payload[12..]).to_string();
        let peer = Peer {
            rank,
            stream,
            pid,
            host,
        };
        if world != self.world_size {
            return Err(dist(format!(
                "{} has WORLD_SIZE {world}, rank 0 has {}",
                peer.describe(),
                self.world_size
            )));
        }
        if rank == 0 || rank >= self.world_size || self.peers[rank].is_some() {
            return Err(dist(format!(
                "{} joined twice or out of range (world size {})",
                peer.describe(),
                self.world_size
            )));
        }
        let _ = peer.stream.set_read_timeout(Some(self.timeout));
        let _ = peer.stream.set_write_timeout(Some(self.timeout));
        Ok(peer)
    }

    fn peer(&mut self, index: usize) -> &mut Peer {
        self.peers[index].as_mut().expect("peer connected")
    }

    fn send(&mut self, index: usize, tag: u8, payload: &[u8], op: &str) -> Result<()> {
        let me = self.rank;
        let timeout = self.timeout;
        let peer = self.peer(index);
        write_frame(&mut peer.stream, tag, payload).map_err(|e| {
            dist(match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
                    "rank {me}: {} did not take data within {:.0} s during {op}",
                    peer.describe(),
                    timeout.as_secs_f64()
                ),
                _ => format!(
                    "rank {me}: {} closed its connection during {op} ({e}): it exited or \
                     crashed; see its own output",
                    peer.describe()
                ),
            })
        })
    }

    fn recv(&mut self, index: usize, want: u8, op: &str) -> Result<Vec<u8>> {
        let me = self.rank;
        let timeout = self.timeout;
        let peer = self.peer(index);
        let (tag, payload) = read_frame(&mut peer.stream).map_err(|e| {
            dist(match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
                    "rank {me}: {} did not answer within {:.0} s during {op} (hung, or much \
                     slower; LOGO_DIST_TIMEOUT_S sets the limit)",
                    peer.describe(),
                    timeout.as_secs_f64()
                ),
                _ => format!(
                    "rank {me}: {} closed its connection during {op}: it exited or crashed; \
                     see its own output",
                    peer.describe()
                ),
            })
        })?;
        if tag == ABORT {
            return Err(dist(format!(
                "{} stopped the job: {}",
                peer.describe(),
                String::from_utf8_lossy(&payload)
            )));
        }
        if tag != want {
            return Err(TrainerError::Internal(format!(
                "rank {me}: {} sent {} during {op}",
                peer.describe(),
                op_name(tag)
            )));
        }
        Ok(payload)
    }

    fn recv_f32(&mut self, index: usize, len: usize) -> Result<Vec<f32>> {
        let payload = self.recv(index, DATA, "all_reduce")?;
        if payload.len() != 4 * len {
            let me = self.rank;
            return Err(TrainerError::Internal(format!(
                "all_reduce: rank {} sent {} values, rank {me} has {len}",
                self.peer(index).rank,
                payload.len() / 4,
            )));
        }
        Ok(payload
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
}

impl Collective for Tcp {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn backend(&self) -> &'static str {
        "tcp"
    }

    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        if self.rank == 0 {
            for r in 1..self.world_size {
                let values = self.recv_f32(r, buf.len())?;
                for (s, x) in buf.iter_mut().zip(values) {
                    *s += x;
                }
            }
            let bytes = f32_bytes(buf);
            for r in 1..self.world_size {
                self.send(r, DATA, &bytes, "all_reduce")?;
            }
        } else {
            self.send(0, DATA, &f32_bytes(buf), "all_reduce")?;
            let values = self.recv_f32(0, buf.len())?;
            buf.copy_from_slice(&values);
        }
        Ok(())
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>) -> Result<()> {
        if self.rank == 0 {
            for r in 1..self.world_size {
                self.send(r, BYTES, bytes, "broadcast")?;
            }
        } else {
            *bytes = self.recv(0, BYTES, "broadcast")?;
        }
        Ok(())
    }

    fn abort(&mut self, message: &str) {
        let me = self.rank;
        for peer in self.peers.iter_mut().flatten() {
            let _ = peer.stream.set_write_timeout(Some(Duration::from_secs(2)));
            let _ = write_frame(
                &mut peer.stream,
                ABORT,
                format!("rank {me} failed: {message}").as_bytes(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn env(rank: usize, world: usize, port: u16) -> DistEnv {
        DistEnv {
            rank,
            world_size: world,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            source: super::super::EnvSource::Torchrun,
        }
    }

    #[test]
    fn three_ranks_sum_in_rank_order() {
        let port = free_port();
        let handles: Vec<_> = (0..3)
            .map(|r| {
                std::thread::spawn(move || {
                    let mut c = Tcp::connect(&env(r, 3, port), Duration::from_secs(20)).unwrap();
                    // rank r sends [r + 0.5, -r]: sums [3.5 - 2 + 0... ] = [0.5+1.5+2.5, -3].
                    let mut v = vec![r as f32 + 0.5, -(r as f32)];
                    c.all_reduce_sum_f32(&mut v).unwrap();
                    let mut b = if r == 0 { vec![7u8, 8, 9] } else { vec![] };
                    c.broadcast_bytes(&mut b).unwrap();
                    c.barrier().unwrap();
                    (v, b)
                })
            })
            .collect();
        for h in handles {
            let (v, b) = h.join().unwrap();
            assert_eq!(v, vec![4.5, -3.0]);
            assert_eq!(b, vec![7, 8, 9]);
        }
    }

    #[test]
    fn a_silent_rank_is_named_after_the_timeout_and_a_closed_one_at_once() {
        let port = free_port();
        let t = Duration::from_secs(2);
        let silent = std::thread::spawn(move || {
            let c = Tcp::connect(&env(1, 3, port), t).unwrap();
            std::thread::sleep(Duration::from_secs(5));
            drop(c);
        });
        let closing = std::thread::spawn(move || {
            let c = Tcp::connect(&env(2, 3, port), t).unwrap();
            drop(c); // exits before the first collective
        });
        let mut root = Tcp::connect(&env(0, 3, port), t).unwrap();
        let started = Instant::now();
        let e = root.all_reduce_sum_f32(&mut [1.0]).unwrap_err().to_string();
        assert!(
            e.contains("rank 1 (pid") && e.contains("did not answer within 2 s during all_reduce"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
        closing.join().unwrap();
        silent.join().unwrap();
        // Rank 2 had closed: reading it now reports end-of-file, not a timeout.
        let e = root.recv(2, DATA, "all_reduce").unwrap_err().to_string();
        assert!(
            e.contains("rank 2 (pid") && e.contains("closed its connection"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_rank_is_named_when_joining() {
        let port = free_port();
        let e = Tcp::connect(&env(0, 2, port), Duration::from_millis(300))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ranks 1 did not connect"), "{e}");
    }
}
