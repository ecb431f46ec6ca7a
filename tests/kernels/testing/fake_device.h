#ifndef RINGATTN_TESTS_KERNELS_TESTING_FAKE_DEVICE_H_
#define RINGATTN_TESTS_KERNELS_TESTING_FAKE_DEVICE_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/chunk_backend.h"
#include "kernels/memory_space.h"

// A device memory space and backend without a GPU, for testing the code
// that keeps tensors on a device (the ring's device-resident path) on any
// machine.
//
// The memory is host memory that host code cannot touch: every buffer is
// mapped PROT_NONE except while one of the space's own operations (or the
// backend's kernels, or an Access scope) runs, so host code that reads or
// writes "device" memory faults at once instead of passing unnoticed.
// Upload and Download are the only ways in and out, and are counted like a
// real device's copies. The operations are the host space's, so results
// must match a CPU ring's to the bit.

namespace ringattn::kernels::testing {

class FakeDeviceSpace final : public HostMemorySpace {
 public:
  FakeDeviceSpace() = default;
  ~FakeDeviceSpace() override;
  FakeDeviceSpace(const FakeDeviceSpace&) = delete;
  FakeDeviceSpace& operator=(const FakeDeviceSpace&) = delete;

  MemoryKind kind() const override { return MemoryKind::kDevice; }
  std::string name() const override { return "fake-device"; }
  absl::Status CheckFits(int64_t bytes) override;
  MemoryTraffic traffic() const override;

  // Makes the whole space readable and writable for a scope (nested and
  // concurrent scopes stack): for the kernels and for test transports that
  // move device memory between two spaces.
  class Access {
   public:
    explicit Access(FakeDeviceSpace& space) : space_(space) { space_.Open(); }
    ~Access() { space_.Close(); }
    Access(const Access&) = delete;
    Access& operator=(const Access&) = delete;

   private:
    FakeDeviceSpace& space_;
  };

  // The device's capacity (default: unlimited); Allocate and CheckFits
  // fail with RESOURCE_EXHAUSTED beyond it.
  void set_capacity(int64_t bytes);
  int64_t bytes_held() const;
  int64_t buffers_held() const;
  int64_t allocations() const;  // Ever made.
  // True when [p, p + bytes) lies inside one buffer of this space.
  bool Owns(const void* p, size_t bytes) const;

 protected:
  absl::StatusOr<std::byte*> AllocateBytes(size_t bytes) override;
  void FreeBytes(std::byte* data, size_t bytes) override;
  absl::Status DoUpload(std::byte* dst, const std::byte* src, size_t bytes) override;
  absl::Status DoDownload(std::byte* dst, const std::byte* src, size_t bytes) override;
  absl::Status DoCopy(std::byte* dst, const std::byte* src, size_t bytes) override;
  absl::Status DoZero(std::byte* dst, size_t bytes) override;
  absl::Status DoAdd(float* dst, int64_t dst_stride, const float* src, int64_t src_stride,
                     int64_t rows, int64_t cols) override;
  absl::Status DoMerge(float* out, float* lse, const float* o_s, const float* lse_s, int64_t rows,
                       int64_t head_dim) override;
  absl::Status DoFromF32(DType dtype, const float* src, int64_t n, std::byte* dst) override;

 private:
  void Open();
  void Close();
  void ProtectLocked(int prot);

  mutable std::mutex mu_;
  std::map<const std::byte*, size_t> buffers_;  // Start -> mapped bytes.
  int64_t held_ = 0;                            // Bytes asked for.
  int64_t capacity_ = INT64_MAX;
  int open_ = 0;
  int64_t allocations_ = 0;
  int64_t host_to_device_ = 0, device_to_host_ = 0;
};

// The CPU kernels computing in a FakeDeviceSpace: every argument of every
// step must be memory of that space (FAILED_PRECONDITION naming the one
// that is not), as a GPU backend's device-resident arguments would be.
class FakeDeviceBackend final : public ChunkBackend {
 public:
  // `space` must outlive this.
  FakeDeviceBackend(std::unique_ptr<ChunkBackend> cpu, FakeDeviceSpace& space)
      : cpu_(std::move(cpu)), space_(space) {}

  std::string name() const override { return "fake-device/" + cpu_->name(); }
  MemorySpace& space() override { return space_; }
  absl::Status Forward(const ForwardChunkArgs& args) override;
  absl::Status Backward(const BackwardChunkArgs& args) override;

 private:
  absl::Status InSpace(const char* what, const void* p, size_t bytes) const;
  absl::Status InSpace(const char* what, const TokenMetaRef& meta) const;

  std::unique_ptr<ChunkBackend> cpu_;
  FakeDeviceSpace& space_;
};

}  // namespace ringattn::kernels::testing

#endif  // RINGATTN_TESTS_KERNELS_TESTING_FAKE_DEVICE_H_
