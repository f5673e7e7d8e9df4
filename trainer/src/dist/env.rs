//! The launch environment of a rank: torchrun's variables, SLURM's, or none (one rank).
//!
//! Sources: PyTorch `torch.distributed.run` (torchrun sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` for each worker) and SLURM `srun`
//! (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_JOB_NODELIST`).
//!
//! Under torchrun, rank 0 cannot listen on `MASTER_PORT`: torchrun's agent on the master node
//! already serves its own TCPStore there and tells its workers so with
//! `TORCHELASTIC_USE_AGENT_STORE=True`. logo's ranks then meet on the next port,
//! `MASTER_PORT + 1` ([`TORCHRUN_PORT_OFFSET`]), which every worker of the job derives from the
//! same variables; `LOGO_DIST_PORT` ([`PORT_VAR`]) names another port instead (set it on every
//! node). Nothing else of torchrun's store is used.

use crate::error::{Result, TrainerError};

/// Where [`DistEnv`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    /// No launcher variables: one rank.
    Single,
    /// `RANK`/`WORLD_SIZE` (torchrun, `logo-trainer --nproc-per-node`).
    Torchrun,
    /// `SLURM_PROCID`/`SLURM_NTASKS`.
    Slurm,
}

/// Environment variable naming the port rank 0 listens on, overriding `MASTER_PORT` (and the
/// torchrun rule, see the module doc).
pub const PORT_VAR: &str = "LOGO_DIST_PORT";

/// Under torchrun's agent store, logo's port is `MASTER_PORT` + this.
pub const TORCHRUN_PORT_OFFSET: u16 = 1;

/// Environment variable holding the job's membership token: `logo-trainer --nproc-per-node`
/// generates one per job and hands it to its workers; export the same value on every node of
/// a multi-node job. Never logged.
pub const TOKEN_VAR: &str = "LOGO_DIST_TOKEN";

/// The secret a rank presents to rank 0 to prove it belongs to the job (see [`TOKEN_VAR`]).
/// `Debug` prints `JobToken(<redacted>)`, so the value never reaches a log.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct JobToken(String);

impl std::fmt::Debug for JobToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "JobToken(none)"
        } else {
            "JobToken(<redacted>)"
        })
    }
}

impl JobToken {
    /// A token of the given value (empty: none).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// 32 random bytes from the operating system (`/dev/urandom`) as 64 hex digits.
    /// Errors: [`TrainerError::Dist`] when the random source cannot be read.
    pub fn generate() -> Result<Self> {
        use std::io::Read;
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| TrainerError::Dist(format!("no random source for the job token: {e}")))?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The value, to hand to a worker's environment (never print it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with `other` in time independent of where they differ (lengths aside).
    pub fn matches(&self, other: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        mine.len() == other.len()
            && mine
                .iter()
                .zip(other)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// A rank's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// W, ranks in the job.
    pub world_size: usize,
    /// Rank on this machine (picks the GPU).
    pub local_rank: usize,
    /// Host of rank 0, where it listens.
    pub master_addr: String,
    /// Port rank 0 listens on: `LOGO_DIST_PORT`, else `MASTER_PORT` (+ 1 under torchrun's
    /// agent store, see the module doc), else 29500.
    pub master_port: u16,
    /// Where the values came from.
    pub source: EnvSource,
    /// The job's membership token ([`TOKEN_VAR`]; empty when unset).
    pub token: JobToken,
}

impl DistEnv {
    /// One rank, no launcher.
    pub fn single() -> Self {
        DistEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            source: EnvSource::Single,
            token: JobToken::default(),
        }
    }

    /// Reads the process environment (see [`DistEnv::from_vars`]).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(&|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Reads torchrun's variables if `RANK` is set, else SLURM's if `SLURM_PROCID` is set, else
    /// returns [`DistEnv::single`]. Under SLURM, `MASTER_ADDR` defaults to the first host of
    /// `SLURM_JOB_NODELIST` and `LOCAL_RANK` to `SLURM_LOCALID`.
    ///
    /// Errors: [`TrainerError::Config`] naming the variable: not a number, `RANK ≥
    /// WORLD_SIZE`, `WORLD_SIZE` 0, or no `MASTER_ADDR` for a multi-rank job.
    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |key: &str| -> Result<Option<usize>> {
            var(key)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| TrainerError::Config {
                        key: key.into(),
                        message: format!("expected a non-negative integer, got {v:?}"),
                    })
                })
                .transpose()
        };
        let bad = |key: &str, message: String| TrainerError::Config {
            key: key.into(),
            message,
        };
        let (source, rank, world, local, rank_key, world_key) = if var("RANK").is_some() {
            let world = num("WORLD_SIZE")?
                .ok_or_else(|| bad("WORLD_SIZE", "RANK is set but WORLD_SIZE is not".into()))?;
            let rank = num("RANK")?.unwrap_or(0);
            let local = num("LOCAL_RANK")?.unwrap_or(rank);
            (
                EnvSource::Torchrun,
                rank,
                world,
                local,
                "RANK",
                "WORLD_SIZE",
            )
        } else if var("SLURM_PROCID").is_some() {
            let world = num("SLURM_NTASKS")?.ok_or_else(|| {
                bad(
                    "SLURM_NTASKS",
                    "SLURM_PROCID is set but SLURM_NTASKS is not".into(),
                )
            })?;
            let rank = num("SLURM_PROCID")?.unwrap_or(0);
            let local = match num("LOCAL_RANK")? {
                Some(l) => l,
                None => num("SLURM_LOCALID")?.unwrap_or(0),
            };
            (
                EnvSource::Slurm,
                rank,
                world,
                local,
                "SLURM_PROCID",
                "SLURM_NTASKS",
            )
        } else {
            return Ok(Self::single());
        };
        if world == 0 {
            return Err(bad(world_key, "must be >= 1".into()));
        }
        if rank >= world {
            return Err(bad(
                rank_key,
                format!("rank {rank} is not below the world size {world}"),
            ));
        }
        let master_addr = master_addr(var, source, world)?;
        let master_port = master_port(var)?;
        Ok(DistEnv {
            rank,
            world_size: world,
            local_rank: local,
            master_addr,
            master_port,
            source,
            token: JobToken::new(var(TOKEN_VAR).unwrap_or_default()),
        })
    }
}

/// The port rank 0 listens on: `LOGO_DIST_PORT`; else `MASTER_PORT`, plus
/// [`TORCHRUN_PORT_OFFSET`] when torchrun's agent serves its store there
/// (`TORCHELASTIC_USE_AGENT_STORE=True`); else 29500. Errors: [`TrainerError::Config`] naming
/// the variable that is not a port, or a `MASTER_PORT` with no port after it.
fn master_port(var: &dyn Fn(&str) -> Option<String>) -> Result<u16> {
    let port = |key: &str| -> Result<Option<u16>> {
        var(key)
            .map(|p| {
                p.trim().parse::<u16>().map_err(|_| TrainerError::Config {
                    key: key.into(),
                    message: format!("expected a port number, got {p:?}"),
                })
            })
            .transpose()
    };
    if let Some(p) = port(PORT_VAR)? {
        return Ok(p);
    }
    let Some(p) = port("MASTER_PORT")? else {
        return Ok(29500);
    };
    let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v == "True");
    if !agent_store {
        return Ok(p);
    }
    p.checked_add(TORCHRUN_PORT_OFFSET)
        .ok_or_else(|| TrainerError::Config {
            key: "MASTER_PORT".into(),
            message: format!(
                "{p} is torchrun's store and no port follows it; set {PORT_VAR} to a free port"
            ),
        })
}

/// Rank 0's host: `MASTER_ADDR`; under SLURM, else the first host of `SLURM_JOB_NODELIST`;
/// else `127.0.0.1` for a one-rank job. Errors: [`TrainerError::Config`] (`MASTER_ADDR`) for
/// a multi-rank job without one.
fn master_addr(
    var: &dyn Fn(&str) -> Option<String>,
    source: EnvSource,
    world: usize,
) -> Result<String> {
    let bad = |key: &str, message: String| TrainerError::Config {
        key: key.into(),
        message,
    };
    match (var("MASTER_ADDR"), source) {
        (Some(a), _) => Ok(a),
        (None, EnvSource::Slurm) => var("SLURM_JOB_NODELIST")
            .and_then(|l| first_slurm_host(&l))
            .ok_or_else(|| {
                bad(
                    "MASTER_ADDR",
                    "not set and SLURM_JOB_NODELIST gives no host; export \
                     MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)"
                        .into(),
                )
            }),
        (None, _) if world == 1 => Ok("127.0.0.1".into()),
        (None, _) => Err(bad(
            "MASTER_ADDR",
            format!("not set for a job of {world} ranks (the host of rank 0)"),
        )),
    }
}

/// The first host of a SLURM host list (`scontrol show hostnames` order): `node[03-05,9],gpu1`
/// → `node03`, `a,b` → `a`. `None` for an empty or malformed list.
pub fn first_slurm_host(list: &str) -> Option<String> {
    let list = list.trim();
    // The first entry ends at a comma outside brackets.
    let mut depth = 0;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let entry = &list[..end];
    let host = match entry.find('[') {
        None => entry.to_string(),
        Some(open) => {
            let close = entry.find(']')?;
            let first = entry[open + 1..close].split([',', '-']).next()?;
            format!("{}{}{}", &entry[..open], first, &entry[close + 1..])
        }
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<DistEnv> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_vars(&|k| map.get(k).cloned())
    }

    #[test]
    fn reads_torchrun_and_slurm_variables() {
        assert_eq!(env(&[]).unwrap(), DistEnv::single());
        let t = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "h0"),
            ("MASTER_PORT", "1234"),
            // torchrun inside a SLURM allocation: torchrun's variables win.
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
        ])
        .unwrap();
        assert_eq!(
            (t.rank, t.world_size, t.local_rank, t.master_port, t.source),
            (3, 8, 1, 1234, EnvSource::Torchrun)
        );
        assert_eq!(t.master_addr, "h0");
        let s = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"),
        ])
        .unwrap();
        assert_eq!(
            (s.rank, s.world_size, s.local_rank, s.master_port, s.source),
            (5, 8, 1, 29500, EnvSource::Slurm)
        );
        assert_eq!(s.master_addr, "gpu07");
    }

    #[test]
    fn torchrun_agent_store_moves_logo_to_the_next_port() {
        let base = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29612"),
        ];
        let port = |extra: &[(&str, &str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            env(&v).map(|e| e.master_port)
        };
        assert_eq!(port(&[]).unwrap(), 29612);
        let agent = ("TORCHELASTIC_USE_AGENT_STORE", "True");
        assert_eq!(port(&[agent]).unwrap(), 29613);
        assert_eq!(
            port(&[("TORCHELASTIC_USE_AGENT_STORE", "False")]).unwrap(),
            29612
        );
        assert_eq!(port(&[agent, (PORT_VAR, "4000")]).unwrap(), 4000);
        let e = env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "65535"),
            agent,
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("MASTER_PORT") && e.contains(PORT_VAR), "{e}");
        let e = port(&[(PORT_VAR, "x")]).unwrap_err().to_string();
        assert!(e.starts_with("config key LOGO_DIST_PORT: expected"), "{e}");
    }

    #[test]
    fn bad_variables_name_themselves() {
        let e = env(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config key RANK: rank 2 is not below the world size 2"
        );
        let e = env(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(
            e.to_string().starts_with("config key RANK: expected"),
            "{e}"
        );
        let e = env(&[("RANK", "0"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR: not set"), "{e}");
        let e = env(&[("RANK", "0")]).unwrap_err();
        assert!(e.to_string().contains("WORLD_SIZE"), "{e}");
    }

    #[test]
    fn first_host_of_slurm_lists() {
        assert_eq!(
            first_slurm_host("node[03-05,9],gpu1").as_deref(),
            Some("node03")
        );
        assert_eq!(first_slurm_host("a,b").as_deref(), Some("a"));
        assert_eq!(first_slurm_host("x[2]-ib").as_deref(), Some("x2-ib"));
        assert_eq!(first_slurm_host(""), None);
    }
}
