//! Data parallelism: collectives over ranks, the launch environment, and gradient averaging.
//!
//! Every rank holds a full copy of the frozen model and of the LoRA adapters, takes its own
//! rows of one global data stream ([`crate::data::ExampleStream::for_rank`]), computes the
//! gradient of its micro-batches, and then the ranks average the LoRA gradients with an
//! all-reduce ([`average_gradients`]): `g = (1/W) Σ_r g_r`. As the loss is a mean over the
//! batch, W ranks with batch b take exactly the step of one rank with batch W·b (tested in
//! `tests/dist.rs`), as in PyTorch `DistributedDataParallel` (Li et al., VLDB 2020). The
//! clipped, averaged gradient is the same on every rank, so each rank's AdamW keeps the same
//! weights; rank 0 broadcasts its initial adapters once ([`broadcast_parameters`]) so that
//! they start equal too. Only rank 0 writes files.
//!
//! Backends of [`Collective`]:
//! - [`Local`]: one rank, no communication;
//! - [`Threads`]: W ranks as threads of one process (tests of the multi-rank code path on CPU);
//! - [`Tcp`]: processes on one or several machines, rank 0 sums (CPU training, the control
//!   channel of NCCL, and dead-rank detection: a rank that exits or stops answering ends the
//!   job with an error naming it, instead of a hang);
//! - [`Nccl`]: NVIDIA NCCL on CUDA tensors, `libnccl.so.2` loaded at run time (no CUDA toolkit
//!   at build time).
//!
//! The launch environment ([`DistEnv::from_env`]) is torchrun's (`RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) or SLURM's (`SLURM_PROCID`, `SLURM_NTASKS`,
//! `SLURM_LOCALID`); `logo-trainer --nproc-per-node N` sets the former for the workers it
//! starts ([`launch`]).

use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainerError};

mod env;
pub mod launch;
mod nccl;
mod tcp;
mod threads;

pub use env::{
    first_slurm_host, DistEnv, EnvSource, JobToken, PORT_VAR, TOKEN_VAR, TORCHRUN_PORT_OFFSET,
};
pub use nccl::{find_nccl_library, Nccl, NcclLibrary};
pub use tcp::Tcp;
pub use threads::Threads;

/// Seconds a rank waits for its peers in one collective (and to connect) before it reports
/// them as not answering: `LOGO_DIST_TIMEOUT_S`, default 1800.
pub fn dist_timeout() -> std::time::Duration {
    let secs = std::env::var("LOGO_DIST_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(1800.0);
    std::time::Duration::from_secs_f64(secs)
}

/// Collective communication between the W ranks of a data-parallel job (the subset of
/// `torch.distributed` the trainer needs). Every rank must call the same operations in the
/// same order with buffers of the same length.
pub trait Collective: Send {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;

    /// W, the number of ranks.
    fn world_size(&self) -> usize;

    /// The backend's name (`local`, `threads`, `tcp`, `nccl`).
    fn backend(&self) -> &'static str;

    /// Sums `buf` element-wise over all ranks, in place; every rank ends with the same values.
    /// Errors: [`TrainerError::Dist`] naming a rank that exited, did not answer within
    /// [`dist_timeout`], or sent a buffer of another length.
    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) -> Result<()>;

    /// Sums the tensors (any shape, float kinds, any device) element-wise over all ranks, in
    /// place, without recording autograd history. The default implementation packs them into
    /// one host f32 buffer for [`Collective::all_reduce_sum_f32`]; [`Nccl`] reduces on the GPU.
    /// Errors: as [`Collective::all_reduce_sum_f32`], and torch errors.
    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()> {
        if tensors.is_empty() {
            return self.all_reduce_sum_f32(&mut []);
        }
        let _guard = tch::no_grad_guard();
        let flat = pack_f32(tensors, Device::Cpu)?;
        let mut host: Vec<f32> = Vec::try_from(&flat)?;
        self.all_reduce_sum_f32(&mut host)?;
        unpack_f32(&Tensor::from_slice(&host), tensors)
    }

    /// Returns when every rank has called it. Errors: as [`Collective::all_reduce_sum_f32`].
    fn barrier(&mut self) -> Result<()> {
        self.all_reduce_sum_f32(&mut [])
    }

    /// Rank 0's `bytes` replace every other rank's. Errors: as
    /// [`Collective::all_reduce_sum_f32`].
    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>) -> Result<()>;

    /// Tells the other ranks that this one stops because of `message` (best effort, never
    /// blocks for long), so that they fail with that message instead of a bare "exited".
    fn abort(&mut self, message: &str) {
        let _ = message;
    }
}

/// Flattens `tensors` into one contiguous f32 vector `[Σ numel]` on `device`.
pub(crate) fn pack_f32(tensors: &[Tensor], device: Device) -> Result<Tensor> {
    let parts = tensors
        .iter()
        .map(|t| {
            t.f_detach()?
                .f_to_device(device)?
                .f_to_kind(Kind::Float)?
                .f_reshape([-1])
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Tensor::f_cat(&parts, 0)?.f_contiguous()?)
}

/// Copies the consecutive pieces of `flat` `[Σ numel]` back into `tensors` (in place, cast to
/// each tensor's kind and device).
pub(crate) fn unpack_f32(flat: &Tensor, tensors: &[Tensor]) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let mut offset = 0;
    for t in tensors {
        let n = t.numel() as i64;
        let piece = flat
            .f_narrow(0, offset, n)?
            .f_view(t.size().as_slice())?
            .f_to_device(t.device())?
            .f_to_kind(t.kind())?;
        t.shallow_clone().f_copy_(&piece)?;
        offset += n;
    }
    Ok(())
}

/// One rank, nothing to communicate.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "local"
    }
    fn all_reduce_sum_f32(&mut self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum(&mut self, _tensors: &[Tensor]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&mut self, _bytes: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
}

/// Averages the gradients of `params` over the ranks: `grad ← (1/W) Σ_r grad_r`, in place.
/// A parameter without a gradient gets a zero one first, so that every rank reduces buffers of
/// the same layout. No-op for W = 1. Errors: the collective's, torch.
pub fn average_gradients(coll: &mut dyn Collective, params: &[Tensor]) -> Result<()> {
    let w = coll.world_size();
    if w == 1 {
        return Ok(());
    }
    let missing: Vec<Tensor> = params
        .iter()
        .filter(|p| !p.grad().defined())
        .map(|p| p.f_mul_scalar(0.0)?.f_sum(Kind::Float))
        .collect::<std::result::Result<_, _>>()?;
    if !missing.is_empty() {
        // d(Σ 0·p)/dp = 0 defines the gradient tensors.
        Tensor::f_stack(&missing, 0)?
            .f_sum(Kind::Float)?
            .f_backward()?;
    }
    let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
    coll.all_reduce_sum(&grads)?;
    let _guard = tch::no_grad_guard();
    for g in &grads {
        let _ = g.shallow_clone().f_div_scalar_(w as f64)?;
    }
    Ok(())
}

/// Makes every rank's `params` equal to rank 0's (in place, no autograd history): other ranks
/// zero theirs, then all ranks sum. Errors: the collective's, torch.
pub fn broadcast_parameters(coll: &mut dyn Collective, params: &[Tensor]) -> Result<()> {
    if coll.world_size() == 1 {
        return Ok(());
    }
    if coll.rank() != 0 {
        let _guard = tch::no_grad_guard();
        for p in params {
            let _ = p.shallow_clone().f_zero_()?;
        }
    }
    coll.all_reduce_sum(params)
}

/// Picks the collective for `env`: [`Local`] for one rank; otherwise `backend` `tcp`, `nccl`,
/// or `auto` (NCCL when `device` is CUDA, TCP otherwise). NCCL ranks use CUDA device
/// `device`'s index. Errors: [`TrainerError::Config`] for an unknown backend or NCCL on a CPU
/// device; [`TrainerError::Dist`] when the rendezvous or NCCL fails.
pub fn connect(env: &DistEnv, backend: &str, device: Device) -> Result<Box<dyn Collective>> {
    if env.world_size == 1 {
        return Ok(Box::new(Local));
    }
    let use_nccl = match backend {
        "auto" => device.is_cuda(),
        "nccl" => {
            if !device.is_cuda() {
                return Err(TrainerError::Config {
                    key: "dist_backend".into(),
                    message: "nccl needs a CUDA device (use tcp on CPU)".into(),
                });
            }
            true
        }
        "tcp" => false,
        other => {
            return Err(TrainerError::Config {
                key: "dist_backend".into(),
                message: format!("unknown backend {other} (allowed: auto, tcp, nccl)"),
            })
        }
    };
    let tcp = Tcp::connect(env, dist_timeout())?;
    if use_nccl {
        let index = match device {
            Device::Cuda(i) => i,
            _ => 0,
        };
        Ok(Box::new(Nccl::new(tcp, index)?))
    } else {
        Ok(Box::new(tcp))
    }
}

/// The device of a rank: `cuda` and `auto` (with a GPU) become `cuda:(LOCAL_RANK mod G)` for
/// the G GPUs this process sees when the job has more than one rank, so that the ranks of a
/// machine use different GPUs, also when the launcher gives each rank its own GPU through
/// `CUDA_VISIBLE_DEVICES` (SLURM `--gpus-per-task`: G = 1, `cuda:0`). Other values are kept.
pub fn rank_device(device: &str, env: &DistEnv) -> String {
    let gpus = tch::Cuda::device_count();
    let gpu = match device {
        "cuda" => true,
        "auto" => gpus > 0,
        _ => false,
    };
    if env.world_size > 1 && gpu {
        format!("cuda:{}", env.local_rank % gpus.max(1) as usize)
    } else {
        device.to_string()
    }
}

/// Test-only fault injection for the dead-rank tests: `LOGO_FAULT=RANK:STEP` makes rank RANK
/// exit with status 17 when it reaches optimizer step STEP (0-based); `LOGO_FAULT=RANK:STEP:hang`
/// makes it sleep forever instead. Not a user setting.
pub fn inject_fault(rank: usize, step: usize) {
    let Ok(spec) = std::env::var("LOGO_FAULT") else {
        return;
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (Some(r), Some(s)) = (
        parts.first().and_then(|v| v.parse::<usize>().ok()),
        parts.get(1).and_then(|v| v.parse::<usize>().ok()),
    ) else {
        return;
    };
    if r == rank && s == step {
        if parts.get(2) == Some(&"hang") {
            eprintln!("logo-trainer: LOGO_FAULT: rank {rank} hangs at step {step}");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        eprintln!("logo-trainer: LOGO_FAULT: rank {rank} exits at step {step}");
        std::process::exit(17);
    }
}
