#include "server/coordinator/region_table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ringattn::coordinator {
namespace {

constexpr size_t kMaxNameBytes = 256;

}  // namespace

void RegionTable::ExpireLocked(absl::Time now) {
  std::erase_if(regions_, [&](const auto& entry) {
    return now - entry.second.last_used > options_.idle_ttl;
  });
}

absl::Status RegionTable::Register(const std::string& owner, const std::string& name,
                                   const std::string& shm_name, uint64_t byte_size) {
  if (name.empty() || name.size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a region's name must have 1 to ", kMaxNameBytes, " bytes"));
  }
  if (byte_size == 0) return absl::InvalidArgumentError("a region's byte_size must be positive");
  absl::StatusOr<shm::ShmFile> file = shm::ShmFile::Open(shm_name);
  if (!file.ok()) return file.status();
  absl::StatusOr<uint64_t> size = file->Size();
  if (!size.ok()) return size.status();
  if (*size < byte_size) {
    return absl::InvalidArgumentError(absl::StrCat("shared-memory object '", shm_name, "' holds ",
                                                   *size, " bytes, fewer than byte_size ",
                                                   byte_size));
  }
  auto region = std::make_shared<Region>(
      Region{.name = name, .owner = owner, .byte_size = byte_size, .file = *std::move(file)});
  const absl::Time now = absl::Now();
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(now);
  if (regions_.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat("region '", name, "' is already registered"));
  }
  const auto held = std::count_if(regions_.begin(), regions_.end(), [&](const auto& entry) {
    return entry.second.region->owner == owner;
  });
  if (held >= options_.max_regions_per_client) {
    return absl::ResourceExhaustedError(
        absl::StrCat("this client already holds ", held, " regions, its limit"));
  }
  regions_.emplace(name, Entry{std::move(region), now});
  return absl::OkStatus();
}

absl::Status RegionTable::Unregister(const std::string& owner, const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(absl::Now());
  auto it = regions_.find(name);
  if (it == regions_.end()) {
    return absl::NotFoundError(absl::StrCat("no region '", name, "' is registered"));
  }
  if (it->second.region->owner != owner) {
    return absl::PermissionDeniedError(absl::StrCat("region '", name, "' is another client's"));
  }
  regions_.erase(it);
  return absl::OkStatus();
}

std::vector<std::shared_ptr<const Region>> RegionTable::List(const std::string& owner) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(absl::Now());
  std::vector<std::shared_ptr<const Region>> out;
  for (const auto& [name, entry] : regions_) {
    if (entry.region->owner == owner) out.push_back(entry.region);
  }
  return out;
}

absl::StatusOr<RegionTensor> RegionTable::Resolve(const std::string& owner,
                                                  const attention::v1::TensorRef& ref,
                                                  uint64_t expected_bytes) {
  std::shared_ptr<const Region> region;
  {
    const absl::Time now = absl::Now();
    std::lock_guard<std::mutex> lock(mu_);
    ExpireLocked(now);
    auto it = regions_.find(ref.region());
    if (it == regions_.end()) {
      return absl::NotFoundError(
          absl::StrCat(ref.name(), ": no region '", ref.region(), "' is registered"));
    }
    if (it->second.region->owner != owner) {
      return absl::PermissionDeniedError(
          absl::StrCat(ref.name(), ": region '", ref.region(), "' is another client's"));
    }
    it->second.last_used = now;
    region = it->second.region;
  }
  if (ref.byte_size() != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(ref.name(), ".byte_size is ", ref.byte_size(),
                                                   ", the tensor holds ", expected_bytes));
  }
  if (ref.offset() > region->byte_size || ref.byte_size() > region->byte_size - ref.offset()) {
    return absl::InvalidArgumentError(
        absl::StrCat(ref.name(), ": bytes [", ref.offset(), ", ", ref.offset() + ref.byte_size(),
                     ") are outside region '", ref.region(), "' of ", region->byte_size, " bytes"));
  }
  absl::StatusOr<uint64_t> size = region->file.Size();
  if (!size.ok()) return size.status();
  if (*size < ref.offset() + ref.byte_size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        ref.name(), ": region '", ref.region(), "' now holds ", *size, " bytes, fewer than the ",
        ref.offset() + ref.byte_size(), " it needs (it was shrunk)"));
  }
  return RegionTensor{std::move(region), ref.offset(), ref.byte_size()};
}

int RegionTable::Count() {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(regions_.size());
}

}  // namespace ringattn::coordinator
