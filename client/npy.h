#ifndef RINGATTN_CLIENT_NPY_H_
#define RINGATTN_CLIENT_NPY_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

// NumPy .npy files (format versions 1-3, little-endian, C order) for the
// CLI's forward and backward from files.

namespace ringattn::client {

struct NpyArray {
  std::string descr;  // e.g. "<f4", "<f2", "<u2", "<i4", "|u1", "|b1"
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
};

absl::StatusOr<NpyArray> ReadNpy(const std::string& path);
absl::Status WriteNpy(const std::string& path, const NpyArray& array);

}  // namespace ringattn::client

#endif  // RINGATTN_CLIENT_NPY_H_
