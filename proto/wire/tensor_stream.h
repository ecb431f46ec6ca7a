#ifndef RINGATTN_PROTO_WIRE_TENSOR_STREAM_H_
#define RINGATTN_PROTO_WIRE_TENSOR_STREAM_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "attention/v1/tensor.pb.h"

// Tensors on the wire: split into TensorChunk messages of at most
// kChunkBytes, and reassembled with every piece checked before any memory
// is sized by what the peer declared.

namespace ringattn::wire {

inline constexpr size_t kChunkBytes = size_t{2} << 20;  // 2 MiB per message

size_t WireDTypeSize(const std::string& dtype);  // 0 if unknown

// Calls emit(chunk) for each piece of `data` (all of it, at least one piece);
// emit may move the chunk into its message. Stops early when emit is false.
void SplitTensor(const std::string& name, const std::string& dtype,
                 const std::vector<int64_t>& shape, std::span<const std::byte> data,
                 absl::FunctionRef<bool(attention::v1::TensorChunk&)> emit);

// Emits one tensor, given as byte runs in row-major order, as pieces of at
// most kChunkBytes, without first gathering the runs into one buffer (used to
// stream a shard's slice, or ranks' outputs in sequence order, straight from
// where they lie).
class PieceWriter {
 public:
  // `emit` is kept (a copy) for the writer's lifetime: a lambda passed here
  // may be a temporary.
  PieceWriter(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape,
              std::function<bool(attention::v1::TensorChunk&)> emit);

  // False once the receiver refused a piece; later calls do nothing.
  bool Append(std::span<const std::byte> run);
  // The same, taking the bytes: a run that starts a piece and fits in one
  // becomes that piece without a copy (a forwarded piece stays as it came).
  bool Append(std::string&& run);
  // Emits what is left (at least one piece per tensor, even an empty one).
  bool Finish();

 private:
  bool Flush();

  attention::v1::TensorChunk chunk_;
  std::function<bool(attention::v1::TensorChunk&)> emit_;
  uint64_t offset_ = 0;
  bool ok_ = true;
  bool emitted_ = false;
};

// Raw little-endian bytes of a received tensor as a vector of T.
template <typename T>
std::vector<T> BytesAs(std::span<const std::byte> bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  // An empty vector's data() may be null, and memcpy with null is undefined even for 0 bytes.
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

// Collects the pieces of named tensors from a stream. Each name must be
// expected; shapes and dtypes must agree across pieces; pieces must arrive
// in order and tile the tensor exactly; the total is bounded.
class TensorAssembler {
 public:
  explicit TensorAssembler(uint64_t max_total_bytes) : max_total_bytes_(max_total_bytes) {}

  // Declares that tensor `name` may arrive, with its exact dtype and shape.
  // `keep`: collect its bytes; otherwise its pieces are only checked and
  // counted (the caller forwards them itself).
  void Expect(const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
              bool required, bool keep = true);

  // Declares that tensor `name` may arrive in any of `dtypes` with any of
  // `shapes`; its first piece fixes which, and the rest must agree.
  void ExpectOneOf(const std::string& name, std::vector<std::string> dtypes,
                   std::vector<std::vector<int64_t>> shapes, bool required);

  absl::Status Add(const attention::v1::TensorChunk& chunk);
  // A whole expected tensor that came another way (from a shared-memory
  // region): counted as all its pieces, so it must not have started and
  // later pieces of it are refused. `data` holds it when it is kept (and is
  // ignored otherwise).
  absl::Status AddWhole(const std::string& name, std::vector<std::byte> data = {});
  // The bytes an expected tensor holds, or nothing for a name not expected
  // (or a shape that overflows).
  std::optional<uint64_t> ExpectedBytes(const std::string& name) const;

  // After the stream ends: every required tensor complete, no partial one.
  absl::Status Finish();

  bool Has(const std::string& name) const;
  // Moves a complete tensor out.
  std::vector<std::byte> Take(const std::string& name);
  // The dtype and shape a received tensor came with.
  const std::string& DTypeOf(const std::string& name) const;
  const std::vector<int64_t>& ShapeOf(const std::string& name) const;

 private:
  struct Slot {
    std::string dtype;
    std::vector<int64_t> shape;
    // ExpectOneOf's choices, until the first piece picks one.
    std::vector<std::string> dtypes;
    std::vector<std::vector<int64_t>> shapes;
    bool required = false;
    bool keep = true;
    uint64_t bytes = 0;
    uint64_t received = 0;
    std::vector<std::byte> data;
    bool started = false;
  };
  static void SetLayout(Slot& slot, const std::string& dtype, std::vector<int64_t> shape);

  std::map<std::string, Slot> slots_;
  uint64_t max_total_bytes_;
  uint64_t total_ = 0;
};

}  // namespace ringattn::wire

#endif  // RINGATTN_PROTO_WIRE_TENSOR_STREAM_H_
