// Peak memory of PyTorch's CUDA caching allocator, what torch.cuda.max_memory_allocated() and
// max_memory_reserved() report, for `logo-trainer bench`. Uses the device-generic
// c10::DeviceAllocator interface (c10/core/CachingDeviceAllocator.h, PyTorch >= 2.8), so it
// compiles without CUDA headers and links only libc10. Returns 0 on success, 1 when no CUDA
// allocator is registered or the device is invalid (the C++ exception is caught here).
#include <c10/core/CachingDeviceAllocator.h>
#include <cstdint>

extern "C" int logo_cuda_peak_memory(int device, int64_t* allocated_peak, int64_t* reserved_peak) {
  try {
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated_peak = stats.allocated_bytes[aggregate].peak;
    *reserved_peak = stats.reserved_bytes[aggregate].peak;
    return 0;
  } catch (...) {
    return 1;
  }
}
