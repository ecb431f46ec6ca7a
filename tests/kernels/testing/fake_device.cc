#include "tests/kernels/testing/fake_device.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace ringattn::kernels::testing {
namespace {

size_t PageRound(size_t bytes) {
  const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

}  // namespace

FakeDeviceSpace::~FakeDeviceSpace() {
  std::lock_guard<std::mutex> lock(mu_);
  // Buffers outlive their space only in a broken test; do not leak the maps.
  for (const auto& [start, mapped] : buffers_) {
    munmap(const_cast<std::byte*>(start), mapped);
  }
}

void FakeDeviceSpace::set_capacity(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  capacity_ = bytes;
}

int64_t FakeDeviceSpace::bytes_held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return held_;
}

int64_t FakeDeviceSpace::buffers_held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(buffers_.size());
}

int64_t FakeDeviceSpace::allocations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocations_;
}

bool FakeDeviceSpace::Owns(const void* p, size_t bytes) const {
  const auto* b = static_cast<const std::byte*>(p);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = buffers_.upper_bound(b);
  if (it == buffers_.begin()) return false;
  --it;
  return b >= it->first && b + bytes <= it->first + it->second;
}

absl::Status FakeDeviceSpace::CheckFits(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (held_ + bytes <= capacity_) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat("fake-device: ", bytes, " bytes needed, ",
                                                   capacity_ - held_, " free of ", capacity_));
}

MemoryTraffic FakeDeviceSpace::traffic() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {host_to_device_, device_to_host_};
}

void FakeDeviceSpace::ProtectLocked(int prot) {
  for (const auto& [start, mapped] : buffers_) {
    if (mprotect(const_cast<std::byte*>(start), mapped, prot) != 0) std::abort();
  }
}

void FakeDeviceSpace::Open() {
  std::lock_guard<std::mutex> lock(mu_);
  if (open_++ == 0) ProtectLocked(PROT_READ | PROT_WRITE);
}

void FakeDeviceSpace::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--open_ == 0) ProtectLocked(PROT_NONE);
}

absl::StatusOr<std::byte*> FakeDeviceSpace::AllocateBytes(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (held_ + static_cast<int64_t>(bytes) > capacity_) {
    return absl::ResourceExhaustedError(absl::StrCat("fake-device: cannot allocate ", bytes,
                                                     " bytes, ", capacity_ - held_, " free"));
  }
  const size_t mapped = PageRound(bytes);
  // Anonymous maps are zero-filled.
  void* p = mmap(nullptr, mapped, open_ > 0 ? PROT_READ | PROT_WRITE : PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat("fake-device: mmap of ", mapped, " failed"));
  }
  auto* data = static_cast<std::byte*>(p);
  buffers_[data] = mapped;
  held_ += static_cast<int64_t>(bytes);
  ++allocations_;
  return data;
}

void FakeDeviceSpace::FreeBytes(std::byte* data, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = buffers_.find(data);
  if (it == buffers_.end()) std::abort();  // Not this space's buffer.
  munmap(data, it->second);
  buffers_.erase(it);
  held_ -= static_cast<int64_t>(bytes);
}

absl::Status FakeDeviceSpace::DoUpload(std::byte* dst, const std::byte* src, size_t bytes) {
  const Access access(*this);
  {
    std::lock_guard<std::mutex> lock(mu_);
    host_to_device_ += static_cast<int64_t>(bytes);
  }
  return HostMemorySpace::DoUpload(dst, src, bytes);
}

absl::Status FakeDeviceSpace::DoDownload(std::byte* dst, const std::byte* src, size_t bytes) {
  const Access access(*this);
  {
    std::lock_guard<std::mutex> lock(mu_);
    device_to_host_ += static_cast<int64_t>(bytes);
  }
  return HostMemorySpace::DoDownload(dst, src, bytes);
}

absl::Status FakeDeviceSpace::DoCopy(std::byte* dst, const std::byte* src, size_t bytes) {
  const Access access(*this);
  return HostMemorySpace::DoCopy(dst, src, bytes);
}

absl::Status FakeDeviceSpace::DoZero(std::byte* dst, size_t bytes) {
  const Access access(*this);
  return HostMemorySpace::DoZero(dst, bytes);
}

absl::Status FakeDeviceSpace::DoAdd(float* dst, int64_t dst_stride, const float* src,
                                    int64_t src_stride, int64_t rows, int64_t cols) {
  const Access access(*this);
  return HostMemorySpace::DoAdd(dst, dst_stride, src, src_stride, rows, cols);
}

absl::Status FakeDeviceSpace::DoMerge(float* out, float* lse, const float* o_s, const float* lse_s,
                                      int64_t rows, int64_t head_dim) {
  const Access access(*this);
  return HostMemorySpace::DoMerge(out, lse, o_s, lse_s, rows, head_dim);
}

absl::Status FakeDeviceSpace::DoFromF32(DType dtype, const float* src, int64_t n, std::byte* dst) {
  const Access access(*this);
  return HostMemorySpace::DoFromF32(dtype, src, n, dst);
}

absl::Status FakeDeviceBackend::InSpace(const char* what, const void* p, size_t bytes) const {
  if (bytes == 0 || space_.Owns(p, bytes)) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("argument ", what, " (", bytes, " bytes) is not in the device space"));
}

absl::Status FakeDeviceBackend::InSpace(const char* what, const TokenMetaRef& meta) const {
  RINGATTN_RETURN_IF_ERROR(InSpace(what, meta.doc.data(), meta.doc.size_bytes()));
  RINGATTN_RETURN_IF_ERROR(InSpace(what, meta.vision.data(), meta.vision.size_bytes()));
  return InSpace(what, meta.padding.data(), meta.padding.size_bytes());
}

absl::Status FakeDeviceBackend::Forward(const ForwardChunkArgs& args) {
  RINGATTN_RETURN_IF_ERROR(InSpace("q", args.q.data, args.q.size_bytes));
  RINGATTN_RETURN_IF_ERROR(InSpace("k", args.k.data, args.k.size_bytes));
  RINGATTN_RETURN_IF_ERROR(InSpace("v", args.v.data, args.v.size_bytes));
  RINGATTN_RETURN_IF_ERROR(InSpace("q_meta", args.q_meta));
  RINGATTN_RETURN_IF_ERROR(InSpace("kv_meta", args.kv_meta));
  RINGATTN_RETURN_IF_ERROR(InSpace("out", args.out.data(), args.out.size_bytes()));
  RINGATTN_RETURN_IF_ERROR(InSpace("lse", args.lse.data(), args.lse.size_bytes()));
  const FakeDeviceSpace::Access access(space_);
  return cpu_->Forward(args);
}

absl::Status FakeDeviceBackend::Backward(const BackwardChunkArgs& args) {
  RINGATTN_RETURN_IF_ERROR(InSpace("q", args.q.data, args.q.size_bytes));
  RINGATTN_RETURN_IF_ERROR(InSpace("k", args.k.data, args.k.size_bytes));
  RINGATTN_RETURN_IF_ERROR(InSpace("v", args.v.data, args.v.size_bytes));
  RINGATTN_RETURN_IF_ERROR(InSpace("out", args.out.data, args.out.size_bytes));
  RINGATTN_RETURN_IF_ERROR(InSpace("dout", args.dout.data, args.dout.size_bytes));
  RINGATTN_RETURN_IF_ERROR(InSpace("lse", args.lse.data(), args.lse.size_bytes()));
  RINGATTN_RETURN_IF_ERROR(InSpace("q_meta", args.q_meta));
  RINGATTN_RETURN_IF_ERROR(InSpace("kv_meta", args.kv_meta));
  RINGATTN_RETURN_IF_ERROR(InSpace("dq", args.dq.data(), args.dq.size_bytes()));
  RINGATTN_RETURN_IF_ERROR(InSpace("dk", args.dk.data(), args.dk.size_bytes()));
  RINGATTN_RETURN_IF_ERROR(InSpace("dv", args.dv.data(), args.dv.size_bytes()));
  const FakeDeviceSpace::Access access(space_);
  return cpu_->Backward(args);
}

}  // namespace ringattn::kernels::testing
