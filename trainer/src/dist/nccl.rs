//! The NCCL backend: NVIDIA's collective library, loaded at run time with `dlopen`
//! (libloading), so that building the trainer needs no CUDA toolkit. The same `libnccl.so.2`
//! that the PyTorch wheel ships (`site-packages/nvidia/nccl/lib`) and that libtorch_cuda has
//! usually loaded already is found first.
//!
//! Source: NCCL `nccl.h` (`ncclGetVersion`, `ncclGetUniqueId`, `ncclCommInitRank`,
//! `ncclAllReduce`, `ncclCommDestroy`, `ncclCommAbort`, `ncclGetErrorString`; `ncclFloat32` =
//! 7, `ncclSum` = 0; `ncclUniqueId` is 128 bytes), CUDA runtime `cudaSetDevice`. The unique id
//! travels from rank 0 over the TCP rendezvous ([`super::Tcp`]), like
//! `torch.distributed`'s store. Every all-reduce first passes a TCP barrier, so that a rank
//! that has died is reported by name (NCCL itself would wait for it forever); then the LoRA
//! gradients, packed into one f32 CUDA buffer, are summed in place on the legacy default
//! stream after a device synchronisation. The wait for the sum never blocks for ever: the
//! stream is polled (`cudaStreamQuery`) together with the communicator's asynchronous error
//! (`ncclCommGetAsyncError`, e.g. a peer that died mid-collective), and after
//! `LOGO_DIST_TIMEOUT_S` ([`super::dist_timeout`]) or on an error the communicator is aborted
//! (`ncclCommAbort`) and the error names this rank ([`wait_for_collective`]).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

use super::{pack_f32, unpack_f32, Collective, Tcp};
use crate::error::{Result, TrainerError};

/// `ncclUniqueId`: 128 opaque bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; 128],
}

type NcclResult = c_int;
type GetVersion = unsafe extern "C" fn(*mut c_int) -> NcclResult;
type GetUniqueId = unsafe extern "C" fn(*mut UniqueId) -> NcclResult;
type CommInitRank = unsafe extern "C" fn(*mut *mut c_void, c_int, UniqueId, c_int) -> NcclResult;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    *mut c_void,
    *mut c_void,
) -> NcclResult;
type CommFree = unsafe extern "C" fn(*mut c_void) -> NcclResult;
type ErrorString = unsafe extern "C" fn(NcclResult) -> *const c_char;
type GetAsyncError = unsafe extern "C" fn(*mut c_void, *mut NcclResult) -> NcclResult;
type CudaSetDevice = unsafe extern "C" fn(c_int) -> c_int;
type CudaStreamQuery = unsafe extern "C" fn(*mut c_void) -> c_int;

/// `ncclSuccess`, `ncclInProgress` (nccl.h).
const NCCL_SUCCESS: NcclResult = 0;
const NCCL_IN_PROGRESS: NcclResult = 7;
/// `cudaSuccess`, `cudaErrorNotReady` (cuda_runtime_api.h).
const CUDA_SUCCESS: c_int = 0;
const CUDA_ERROR_NOT_READY: c_int = 600;

const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

/// The resolved entry points of a loaded `libnccl.so.2`.
pub struct NcclLibrary {
    /// Where it was loaded from (a path, or the soname when the loader found it).
    pub path: String,
    get_version: GetVersion,
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    all_reduce: AllReduce,
    comm_destroy: CommFree,
    comm_abort: CommFree,
    comm_get_async_error: GetAsyncError,
    error_string: ErrorString,
    _lib: libloading::Library,
}

/// Where `libnccl.so.2` is looked for, in order: `$LOGO_NCCL_LIB`; the soname (already loaded
/// by libtorch_cuda, or on the loader's path); `nvidia/nccl/lib/libnccl.so.2` next to the
/// libtorch this process runs (the PyTorch wheel's layout, `site-packages/torch/lib`).
pub fn find_nccl_library() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(p) = std::env::var("LOGO_NCCL_LIB") {
        if !p.is_empty() {
            out.push(p);
        }
    }
    out.push("libnccl.so.2".to_string());
    if let Some(torch_lib) = loaded_torch_lib_dir() {
        let p = torch_lib.join("../../nvidia/nccl/lib/libnccl.so.2");
        out.push(p.display().to_string());
    }
    out
}

/// The folder of the `libtorch_cpu.so` mapped into this process (from `/proc/self/maps`).
fn loaded_torch_lib_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so") || p.ends_with("/libtorch.so"))
        .and_then(|p| PathBuf::from(p).parent().map(PathBuf::from))
}

impl NcclLibrary {
    /// Loads the first of [`find_nccl_library`] that opens and resolves every symbol.
    /// Errors: [`TrainerError::Dist`] listing what was tried and why each failed.
    pub fn load() -> Result<Self> {
        let mut tried = Vec::new();
        for candidate in find_nccl_library() {
            match Self::open(&candidate) {
                Ok(lib) => return Ok(lib),
                Err(e) => tried.push(format!("{candidate}: {e}")),
            }
        }
        Err(TrainerError::Dist(format!(
            "cannot load NCCL (set LOGO_NCCL_LIB to libnccl.so.2, or use --dist-backend tcp); \
             tried {}",
            tried.join("; ")
        )))
    }

    /// Opens `path` and resolves the NCCL symbols. Errors: the loader's message.
    pub fn open(path: &str) -> std::result::Result<Self, libloading::Error> {
        // SAFETY: loading NCCL runs its (side-effect free) initialisers; the symbols are
        // resolved with their C signatures from nccl.h and only called through those types.
        unsafe {
            let lib = libloading::Library::new(path)?;
            Ok(NcclLibrary {
                path: path.to_string(),
                get_version: *lib.get::<GetVersion>(b"ncclGetVersion\0")?,
                get_unique_id: *lib.get::<GetUniqueId>(b"ncclGetUniqueId\0")?,
                comm_init_rank: *lib.get::<CommInitRank>(b"ncclCommInitRank\0")?,
                all_reduce: *lib.get::<AllReduce>(b"ncclAllReduce\0")?,
                comm_destroy: *lib.get::<CommFree>(b"ncclCommDestroy\0")?,
                comm_abort: *lib.get::<CommFree>(b"ncclCommAbort\0")?,
                comm_get_async_error: *lib.get::<GetAsyncError>(b"ncclCommGetAsyncError\0")?,
                error_string: *lib.get::<ErrorString>(b"ncclGetErrorString\0")?,
                _lib: lib,
            })
        }
    }

    /// NCCL's version code, e.g. 22803 for 2.28.3 (`NCCL_VERSION_CODE`). Errors:
    /// [`TrainerError::Dist`].
    pub fn version(&self) -> Result<i32> {
        let mut v: c_int = 0;
        // SAFETY: ncclGetVersion writes one int.
        self.check(unsafe { (self.get_version)(&mut v) }, "ncclGetVersion")?;
        Ok(v)
    }

    fn check(&self, code: NcclResult, op: &str) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        Err(TrainerError::Dist(format!(
            "{op} failed: {}",
            self.describe(code)
        )))
    }

    /// `"{ncclGetErrorString(code)} (NCCL error {code})"`.
    fn describe(&self, code: NcclResult) -> String {
        // SAFETY: ncclGetErrorString returns a static C string.
        let msg = unsafe { CStr::from_ptr((self.error_string)(code)) }.to_string_lossy();
        format!("{msg} (NCCL error {code})")
    }
}

/// What one look at a collective in flight saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// The stream finished the collective.
    Done,
    /// Still running, no error reported.
    Pending,
    /// An error: the CUDA stream's or the communicator's asynchronous one.
    Failed(String),
}

/// One poll from the library's return codes: `stream` from `cudaStreamQuery`, `async_error`
/// from `ncclCommGetAsyncError` (asked only while the stream is not done), `describe` names an
/// NCCL code. `cudaSuccess` → [`Poll::Done`]; `cudaErrorNotReady` with `ncclSuccess` or
/// `ncclInProgress` → [`Poll::Pending`]; any other code → [`Poll::Failed`].
pub fn classify(
    stream: c_int,
    async_error: impl FnOnce() -> NcclResult,
    describe: impl Fn(NcclResult) -> String,
) -> Poll {
    match stream {
        CUDA_SUCCESS => Poll::Done,
        CUDA_ERROR_NOT_READY => match async_error() {
            NCCL_SUCCESS | NCCL_IN_PROGRESS => Poll::Pending,
            code => Poll::Failed(format!("communicator error: {}", describe(code))),
        },
        code => Poll::Failed(format!("CUDA error {code} on the collective's stream")),
    }
}

/// Waits for a collective by calling `poll` every `interval` until [`Poll::Done`]. Errors:
/// [`TrainerError::Dist`] naming `rank` and `op` on [`Poll::Failed`], or when `timeout`
/// (`LOGO_DIST_TIMEOUT_S`) passes first: a peer that died or hangs inside the collective. The
/// caller then aborts the communicator.
pub fn wait_for_collective(
    mut poll: impl FnMut() -> Poll,
    timeout: Duration,
    interval: Duration,
    rank: usize,
    op: &str,
) -> Result<()> {
    let started = Instant::now();
    loop {
        match poll() {
            Poll::Done => return Ok(()),
            Poll::Failed(why) => {
                return Err(TrainerError::Dist(format!(
                    "rank {rank}: {op} failed: {why}; communicator aborted"
                )))
            }
            Poll::Pending if started.elapsed() >= timeout => {
                return Err(TrainerError::Dist(format!(
                    "rank {rank}: {op} did not complete within {timeout:?} (LOGO_DIST_TIMEOUT_S): \
                     a peer died or hangs inside the collective; communicator aborted"
                )))
            }
            Poll::Pending => std::thread::sleep(interval),
        }
    }
}

/// A rank's NCCL communicator plus its TCP group (rendezvous, barriers, dead-rank detection).
pub struct Nccl {
    tcp: Tcp,
    lib: NcclLibrary,
    comm: *mut c_void,
    device: usize,
    stream_query: CudaStreamQuery,
}

// SAFETY: the communicator is used by one thread at a time (`&mut self`); NCCL communicators
// may be used from any thread.
unsafe impl Send for Nccl {}

/// Makes CUDA device `index` current; returns the runtime's `cudaStreamQuery`.
fn set_cuda_device(index: usize) -> Result<CudaStreamQuery> {
    let mut errors = Vec::new();
    for name in ["libcudart.so.13", "libcudart.so.12", "libcudart.so"] {
        // SAFETY: the CUDA runtime libtorch_cuda already loaded (same soname, same instance);
        // cudaSetDevice(int) -> cudaError_t, cudaStreamQuery(cudaStream_t) -> cudaError_t.
        let result = unsafe {
            libloading::Library::new(name).and_then(|lib| {
                let f = *lib.get::<CudaSetDevice>(b"cudaSetDevice\0")?;
                let query = *lib.get::<CudaStreamQuery>(b"cudaStreamQuery\0")?;
                Ok((f(index as c_int), query, lib))
            })
        };
        match result {
            Ok((0, query, lib)) => {
                std::mem::forget(lib); // keep the runtime loaded for the process
                return Ok(query);
            }
            Ok((code, _, _)) => {
                return Err(TrainerError::Dist(format!(
                    "cudaSetDevice({index}) failed with CUDA error {code}"
                )))
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Err(TrainerError::Dist(format!(
        "cannot load the CUDA runtime: {}",
        errors.join("; ")
    )))
}

impl Nccl {
    /// Creates the communicator of `tcp`'s group on CUDA device `device`: loads NCCL, makes the
    /// device current, rank 0 draws the unique id and sends it over TCP, all ranks call
    /// `ncclCommInitRank`. Errors: [`TrainerError::Dist`] (library missing, CUDA, NCCL,
    /// rendezvous).
    pub fn new(mut tcp: Tcp, device: usize) -> Result<Self> {
        let lib = match NcclLibrary::load() {
            Ok(lib) => lib,
            Err(e) => {
                tcp.abort(&e.to_string());
                return Err(e);
            }
        };
        let stream_query = set_cuda_device(device)?;
        let mut id = UniqueId { internal: [0; 128] };
        let mut bytes = vec![0u8; 128];
        if tcp.rank() == 0 {
            // SAFETY: writes 128 bytes into `id`.
            lib.check(unsafe { (lib.get_unique_id)(&mut id) }, "ncclGetUniqueId")?;
            for (b, c) in bytes.iter_mut().zip(id.internal) {
                *b = c as u8;
            }
        }
        tcp.broadcast_bytes(&mut bytes)?;
        for (c, b) in id.internal.iter_mut().zip(&bytes) {
            *c = *b as c_char;
        }
        let mut comm: *mut c_void = std::ptr::null_mut();
        let (world, rank) = (tcp.world_size() as c_int, tcp.rank() as c_int);
        // SAFETY: `comm` receives the communicator; the id is the group's.
        lib.check(
            unsafe { (lib.comm_init_rank)(&mut comm, world, id, rank) },
            "ncclCommInitRank",
        )?;
        Ok(Nccl {
            tcp,
            lib,
            comm,
            device,
            stream_query,
        })
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.tcp.rank()
    }

    fn world_size(&self) -> usize {
        self.tcp.world_size()
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum_f32(&mut self, buf: &mut [f32]) -> Result<()> {
        // Small host buffers (metrics) go over TCP.
        self.tcp.all_reduce_sum_f32(buf)
    }

    fn all_reduce_sum(&mut self, tensors: &[Tensor]) -> Result<()> {
        self.tcp.barrier()?;
        if tensors.is_empty() {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let device = Device::Cuda(self.device);
        let flat = pack_f32(tensors, device)?;
        tch::Cuda::synchronize(self.device as i64);
        let ptr = flat.data_ptr();
        // SAFETY: `flat` is a contiguous f32 CUDA buffer of `numel` elements on the
        // communicator's device, alive until after the synchronisation below; null stream =
        // the legacy default stream.
        let code = unsafe {
            (self.lib.all_reduce)(
                ptr,
                ptr,
                flat.numel(),
                NCCL_FLOAT32,
                NCCL_SUM,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        self.lib.check(code, "ncclAllReduce")?;
        let (lib, comm, query) = (&self.lib, self.comm, self.stream_query);
        let poll = || {
            // SAFETY: the legacy default stream (null) of the current device; the
            // communicator is ours and alive.
            let stream = unsafe { query(std::ptr::null_mut()) };
            let async_error = || {
                let mut code = NCCL_SUCCESS;
                // SAFETY: writes one ncclResult_t for our live communicator.
                let called = unsafe { (lib.comm_get_async_error)(comm, &mut code) };
                if called == NCCL_SUCCESS {
                    code
                } else {
                    called
                }
            };
            classify(stream, async_error, |c| lib.describe(c))
        };
        let rank = self.tcp.rank();
        let waited = wait_for_collective(
            poll,
            super::dist_timeout(),
            Duration::from_millis(1),
            rank,
            "ncclAllReduce",
        );
        if let Err(e) = waited {
            self.abort(&e.to_string());
            return Err(e);
        }
        unpack_f32(&flat, tensors)
    }

    fn broadcast_bytes(&mut self, bytes: &mut Vec<u8>) -> Result<()> {
        self.tcp.broadcast_bytes(bytes)
    }

    fn abort(&mut self, message: &str) {
        self.tcp.abort(message);
        if !self.comm.is_null() {
            // SAFETY: the communicator is ours; after abort it is not used again.
            unsafe { (self.lib.comm_abort)(self.comm) };
            self.comm = std::ptr::null_mut();
        }
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if !self.comm.is_null() {
            // SAFETY: the communicator is ours and no operation is in flight.
            unsafe { (self.lib.comm_destroy)(self.comm) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PyTorch wheel's NCCL resolves every symbol we call and reports a 2.x version (no
    /// GPU needed). Skips when no libnccl is installed.
    #[test]
    fn resolves_the_wheel_nccl() {
        let lib = match NcclLibrary::load() {
            Ok(lib) => lib,
            Err(e) => {
                // The CPU wheel has no libnccl: not a fixture of this machine's kind.
                return logo_env::paths::not_applicable(&e.to_string());
            }
        };
        let v = lib.version().unwrap();
        // NCCL_VERSION_CODE = major·10000 + minor·100 + patch since 2.9.
        assert!((20900..30000).contains(&v), "version code {v}");
        eprintln!("NCCL {v} from {}", lib.path);
    }

    /// The library's return codes, stubbed: a finished stream is done whatever NCCL says; a
    /// running one is pending while NCCL reports success or in-progress, and failed (with the
    /// error's text) on anything else, e.g. ncclRemoteError (6) from a peer that died; any
    /// other CUDA code fails.
    #[test]
    fn return_codes_classify_a_collective_in_flight() {
        let describe = |c: NcclResult| format!("stub error {c}");
        let never = || -> NcclResult { panic!("async error asked of a finished stream") };
        assert_eq!(classify(CUDA_SUCCESS, never, describe), Poll::Done);
        assert_eq!(classify(600, || 0, describe), Poll::Pending);
        assert_eq!(classify(600, || 7, describe), Poll::Pending);
        assert_eq!(
            classify(600, || 6, describe),
            Poll::Failed("communicator error: stub error 6".into())
        );
        assert_eq!(
            classify(700, || 0, describe),
            Poll::Failed("CUDA error 700 on the collective's stream".into())
        );
    }

    /// A collective that never finishes ends after the timeout with an error naming the rank;
    /// an asynchronous error ends the wait at once; a collective that finishes is waited for
    /// exactly until it does.
    #[test]
    fn the_wait_times_out_fails_or_finishes() {
        let tick = Duration::from_millis(1);
        let started = Instant::now();
        let e = wait_for_collective(|| Poll::Pending, Duration::from_millis(50), tick, 3, "op")
            .unwrap_err()
            .to_string();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(
            e.contains("rank 3: op did not complete within 50ms (LOGO_DIST_TIMEOUT_S)")
                && e.contains("communicator aborted"),
            "{e}"
        );
        let mut polls = 0;
        let e = wait_for_collective(
            || {
                polls += 1;
                if polls < 3 {
                    Poll::Pending
                } else {
                    Poll::Failed("communicator error: stub error 6".into())
                }
            },
            Duration::from_secs(60),
            tick,
            1,
            "ncclAllReduce",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(polls, 3);
        assert!(
            e.contains("rank 1: ncclAllReduce failed: communicator error: stub error 6"),
            "{e}"
        );
        let mut polls = 0;
        wait_for_collective(
            || {
                polls += 1;
                if polls < 5 {
                    Poll::Pending
                } else {
                    Poll::Done
                }
            },
            Duration::from_secs(60),
            tick,
            0,
            "op",
        )
        .unwrap();
        assert_eq!(polls, 5);
    }

    #[test]
    fn a_missing_library_gives_a_clear_error() {
        let e = NcclLibrary::open("/nonexistent/libnccl.so.2")
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/libnccl.so.2"), "{e}");
    }
}
