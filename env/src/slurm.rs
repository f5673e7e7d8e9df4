//! A one-node Slurm cluster for the launcher tests: `scripts/slurm-cluster.sh` (Debian's
//! slurm-wlm as root, `auth/none`, its own ports and files under a temporary folder) started
//! by [`Cluster::start`] and stopped when the [`Cluster`] is dropped. Tests run `srun`,
//! `sbatch`, `squeue` and `scancel` through [`Cluster::command`], which points them at this
//! cluster's configuration (`SLURM_CONF`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running one-node cluster; dropping it stops the daemons.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    script: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    /// Starts a cluster with its files under `dir` through `repo/scripts/slurm-cluster.sh`;
    /// `None` (and [`crate::paths::fixture_missing`], which fails under `CI=true`) when Slurm
    /// is not installed (`scripts/slurm-cluster.sh install`). Panics when installed Slurm
    /// does not start, with the script's output.
    pub fn start(repo: &Path, dir: &Path) -> Option<Cluster> {
        let installed = Command::new("slurmctld").arg("-V").output().is_ok();
        crate::paths::require_fixture(
            installed.then_some(()),
            "Slurm (slurmctld; scripts/slurm-cluster.sh install)",
        )?;
        let script = repo.join("scripts/slurm-cluster.sh");
        let out = Command::new(&script)
            .arg("start")
            .arg(dir)
            .output()
            .expect("scripts/slurm-cluster.sh runs");
        let cluster = Cluster {
            dir: dir.to_path_buf(),
            script,
            conf: dir.join("slurm.conf"),
        };
        assert!(
            out.status.success(),
            "slurm-cluster.sh start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(cluster)
    }

    /// `program` (`srun`, `sbatch`, …) with `SLURM_CONF` set to this cluster's.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// Submits `sbatch --parsable ARGS` and returns the job id. Panics when sbatch fails.
    pub fn sbatch(&self, args: &[&str]) -> String {
        let out = self
            .command("sbatch")
            .arg("--parsable")
            .args(args)
            .output()
            .expect("sbatch runs");
        assert!(
            out.status.success(),
            "sbatch {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        id.split(';').next().unwrap_or_default().to_string()
    }

    /// Waits until `squeue` lists no task of job `id`; panics after `timeout`.
    pub fn wait(&self, id: &str, timeout: Duration) {
        let started = Instant::now();
        loop {
            let out = self
                .command("squeue")
                .args(["-h", "-j", id])
                .output()
                .expect("squeue runs");
            // squeue fails once the controller has forgotten the job: done too.
            if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "job {id} still queued or running after {timeout:?}:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The cluster's folder (configuration, state, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}
