//! Shards of a run: `--shard I/N`, or a Slurm job array's task variables; a shard takes the
//! units whose index ≡ I (mod N), so N processes share one output without coordinating.

/// Which share of the units a process takes: those whose index ≡ `index` (mod `count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based shard number, `< count`.
    pub index: u64,
    /// Number of shards, ≥ 1.
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    /// `I/N` with `0 <= I < N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("expected I/N with 0 <= I < N (e.g. 0/4), got {s:?}");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u64, u64) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// The shard of a Slurm job array task: `SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN`
    /// (0 when unset) of `SLURM_ARRAY_TASK_COUNT`; `None` outside an array.
    /// Errors: the variables are set but do not form a shard (named in the message).
    pub fn from_slurm_env() -> std::result::Result<Option<Self>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (Some(id), Some(count)) = (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT"))
        else {
            return Ok(None);
        };
        let num = |k: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}={v:?} is not a number"))
        };
        let id = num("SLURM_ARRAY_TASK_ID", &id)?;
        let count = num("SLURM_ARRAY_TASK_COUNT", &count)?;
        let min = match var("SLURM_ARRAY_TASK_MIN") {
            Some(m) => num("SLURM_ARRAY_TASK_MIN", &m)?,
            None => 0,
        };
        let index = id.checked_sub(min).ok_or_else(|| {
            format!("SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}")
        })?;
        format!("{index}/{count}")
            .parse()
            .map(Some)
            .map_err(|e| format!("SLURM_ARRAY_TASK_* variables: {e}"))
    }

    /// True when unit `index` belongs to this shard.
    pub fn takes(&self, index: u64) -> bool {
        index % self.count == self.index
    }
}
