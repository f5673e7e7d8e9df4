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
//! stream after a device synchronisation, and the device is synchronised again.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;

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
type CudaSetDevice = unsafe extern "C" fn(c_int) -> c_int;

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
        // SAFETY: ncclGetErrorString returns a static C string.
        let msg = unsafe { CStr::from_ptr((self.error_string)(code)) }
            .to_string_lossy()
            .to_string();
        Err(TrainerError::Dist(format!(
            "{op} failed: {msg} (NCCL error {code})"
        )))
    }
}

/// A rank's NCCL communicator plus its TCP group (rendezvous, barriers, dead-rank detection).
pub struct Nccl {
    tcp: Tcp,
    lib: NcclLibrary,
    comm: *mut c_void,
    device: usize,
}

// SAFETY: the communicator is used by one thread at a time (`&mut self`); NCCL communicators
// may be used from any thread.
unsafe impl Send for Nccl {}

fn set_cuda_device(index: usize) -> Result<()> {
    let mut errors = Vec::new();
    for name in ["libcudart.so.13", "libcudart.so.12", "libcudart.so"] {
        // SAFETY: the CUDA runtime libtorch_cuda already loaded (same soname, same instance);
        // cudaSetDevice(int) -> cudaError_t.
        let result = unsafe {
            libloading::Library::new(name).and_then(|lib| {
                let f = *lib.get::<CudaSetDevice>(b"cudaSetDevice\0")?;
                Ok((f(index as c_int), lib))
            })
        };
        match result {
            Ok((0, lib)) => {
                std::mem::forget(lib); // keep the runtime loaded for the process
                return Ok(());
            }
            Ok((code, _)) => {
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
        set_cuda_device(device)?;
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
        tch::Cuda::synchronize(self.device as i64);
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

    #[test]
    fn a_missing_library_gives_a_clear_error() {
        let e = NcclLibrary::open("/nonexistent/libnccl.so.2")
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/libnccl.so.2"), "{e}");
    }
}
