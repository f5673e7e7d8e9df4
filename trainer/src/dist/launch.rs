//! `logo-trainer --nproc-per-node N`: start N workers of the same command on this machine with
//! torchrun's environment (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`), like `torchrun --nproc-per-node N` (PyTorch
//! `torch.distributed.run`, static rendezvous). With `--nnodes K --node-rank i`, run it once
//! per machine with the same `--master-addr`/`--master-port`.
//!
//! The launcher watches its workers: when one fails (non-zero exit, or killed by a signal), it
//! names it, gives the others a grace period to stop on their own (their collectives fail as
//! soon as a peer's connection closes) and then kills them, and exits non-zero.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::error::{Result, TrainerError};

/// How to start the workers.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchConfig {
    /// Workers on this machine (GPUs, or CPU processes).
    pub nproc_per_node: usize,
    /// Machines in the job; default 1.
    pub nnodes: usize,
    /// This machine's index, `0..nnodes`; default 0.
    pub node_rank: usize,
    /// Host of global rank 0 (on machine 0). Default 127.0.0.1, required when `nnodes > 1`.
    pub master_addr: Option<String>,
    /// Port of rank 0. Default: a free port on one machine, 29500 on several.
    pub master_port: Option<u16>,
    /// Seconds the surviving workers get to stop by themselves after one failed; default 10.
    pub grace_seconds: f64,
}

impl LaunchConfig {
    /// Checks the values. Errors: [`TrainerError::Config`] naming the key (`node_rank`; the
    /// binary names its flag).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(TrainerError::Config {
                key: key.into(),
                message,
            })
        };
        if self.nproc_per_node == 0 {
            return bad("nproc_per_node", "must be >= 1".into());
        }
        if self.nnodes == 0 {
            return bad("nnodes", "must be >= 1".into());
        }
        if self.node_rank >= self.nnodes {
            return bad(
                "node_rank",
                format!("{} is not below nnodes {}", self.node_rank, self.nnodes),
            );
        }
        if self.nnodes > 1 && self.master_addr.is_none() {
            return bad(
                "master_addr",
                "required with nnodes > 1 (the host of node 0)".into(),
            );
        }
        Ok(())
    }
}

/// Flags of the launcher, which workers must not see again: `(flag, takes a value)`.
pub const LAUNCHER_FLAGS: [(&str, bool); 5] = [
    ("--nproc-per-node", true),
    ("--nnodes", true),
    ("--node-rank", true),
    ("--master-addr", true),
    ("--master-port", true),
];

/// `args` (without the program name) minus the launcher's flags, in either `--flag value` or
/// `--flag=value` form.
pub fn worker_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_next = false;
    for a in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        let s = a.to_string_lossy();
        let launcher = LAUNCHER_FLAGS
            .iter()
            .find(|(f, _)| s == *f || s.strip_prefix(f).is_some_and(|rest| rest.starts_with('=')));
        match launcher {
            Some((f, takes_value)) => skip_next = *takes_value && s == *f,
            None => out.push(a.clone()),
        }
    }
    out
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| TrainerError::Dist(format!("no free port for MASTER_PORT: {e}")))
}

fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// Starts the workers (`exe args…` with the rank variables) and waits for all of them.
/// Returns Ok when every worker exited 0. Errors: [`TrainerError::Config`] (bad flags),
/// [`TrainerError::Dist`] naming the first worker that failed (rank, pid, status), after the
/// others were stopped, or a worker that could not be started.
pub fn launch(cfg: &LaunchConfig, exe: &Path, args: &[OsString]) -> Result<()> {
    cfg.validate()?;
    let world = cfg.nproc_per_node * cfg.nnodes;
    let addr = cfg
        .master_addr
        .clone()
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = match cfg.master_port {
        Some(p) => p,
        None if cfg.nnodes == 1 => free_port()?,
        None => 29500,
    };
    let token = job_token(cfg)?;
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(cfg.nproc_per_node);
    for local in 0..cfg.nproc_per_node {
        let rank = cfg.node_rank * cfg.nproc_per_node + local;
        let child = Command::new(exe)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", cfg.nproc_per_node.to_string())
            .env("GROUP_RANK", cfg.node_rank.to_string())
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", port.to_string())
            .env(super::TOKEN_VAR, token.expose())
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                for (_, c) in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(TrainerError::Dist(format!(
                    "cannot start rank {rank} ({}): {e}",
                    exe.display()
                )));
            }
        }
    }
    wait_all(children, cfg.grace_seconds)
}

/// The job's membership token: the one exported in [`super::TOKEN_VAR`] (the same on every
/// node of a multi-node job), else a fresh one for a one-node job; the workers get it only
/// through their environment. Errors: [`TrainerError::Config`] when `--nnodes > 1` and the
/// variable is unset; [`TrainerError::Dist`] when no random token can be made.
fn job_token(cfg: &LaunchConfig) -> Result<super::JobToken> {
    match std::env::var(super::TOKEN_VAR)
        .ok()
        .filter(|t| !t.is_empty())
    {
        Some(t) => Ok(super::JobToken::new(t)),
        None if cfg.nnodes == 1 => super::JobToken::generate(),
        None => Err(TrainerError::Config {
            key: super::TOKEN_VAR.into(),
            message: "required with --nnodes > 1: export the same secret on every node \
                      (e.g. LOGO_DIST_TOKEN=$(openssl rand -hex 32))"
                .into(),
        }),
    }
}

/// Waits for every worker `(rank, child)`. After the first failure the others get
/// `grace_seconds` to stop on their own (their collectives fail), then are killed.
/// Errors: [`TrainerError::Dist`] naming the first worker that failed (rank, pid, status).
fn wait_all(mut children: Vec<(usize, Child)>, grace_seconds: f64) -> Result<()> {
    let mut done: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut first_failure: Option<(usize, u32, ExitStatus)> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        for (i, (rank, child)) in children.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                done[i] = Some(status);
                if !status.success() && first_failure.is_none() {
                    eprintln!(
                        "logo-trainer: rank {rank} (pid {}) failed with {}; stopping the other ranks",
                        child.id(),
                        describe(&status)
                    );
                    first_failure = Some((*rank, child.id(), status));
                    kill_at =
                        Some(Instant::now() + Duration::from_secs_f64(grace_seconds.max(0.0)));
                }
            }
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for (i, (_, child)) in children.iter_mut().enumerate() {
                if done[i].is_none() {
                    let _ = child.kill();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match first_failure {
        None => Ok(()),
        Some((rank, pid, status)) => Err(TrainerError::Dist(format!(
            "rank {rank} (pid {pid}) failed with {}; the job stopped ({} of {} ranks on this \
             node exited cleanly)",
            describe(&status),
            done.iter().flatten().filter(|s| s.success()).count(),
            children.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_launcher_flags_in_both_forms() {
        let args: Vec<OsString> = [
            "--data",
            "d",
            "--nproc-per-node",
            "2",
            "--master-port=5",
            "--nnodes=1",
            "--node-rank",
            "0",
            "--batch-size",
            "1",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let kept: Vec<String> = worker_args(&args)
            .iter()
            .map(|a| a.to_string_lossy().into())
            .collect();
        assert_eq!(kept, vec!["--data", "d", "--batch-size", "1"]);
    }

    #[test]
    fn bad_launch_flags_are_named() {
        let cfg = LaunchConfig {
            nproc_per_node: 2,
            nnodes: 2,
            node_rank: 2,
            master_addr: Some("h".into()),
            master_port: None,
            grace_seconds: 1.0,
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("config key node_rank: 2 is not below nnodes 2"));
        let cfg = LaunchConfig {
            node_rank: 0,
            master_addr: None,
            ..cfg
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("config key master_addr: "));
    }

    #[test]
    fn a_failing_worker_is_named_and_the_others_stopped() {
        // Workers are `sh -c`: rank 1 fails at once, rank 0 would sleep for a minute.
        let cfg = LaunchConfig {
            nproc_per_node: 2,
            nnodes: 1,
            node_rank: 0,
            master_addr: None,
            master_port: None,
            grace_seconds: 0.5,
        };
        let script = r#"if [ "$RANK" = 1 ]; then exit 3; else sleep 60; fi"#;
        let started = Instant::now();
        let e = launch(
            &cfg,
            Path::new("/bin/sh"),
            &[OsString::from("-c"), OsString::from(script)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rank 1 (pid") && e.contains("exit status 3"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
