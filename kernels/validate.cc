#include "kernels/validate.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "kernels/status_macros.h"

namespace ringattn::kernels {
namespace {

// Guards every size product so a huge declared shape is an error, not an
// overflow.
constexpr int64_t kMaxElements = int64_t{1} << 40;

std::string ShapeString(const std::array<int64_t, 4>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

absl::StatusOr<int64_t> CheckedProduct(absl::string_view name,
                                       const std::array<int64_t, 4>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ".shape ", ShapeString(shape), " has a non-positive dimension"));
    }
    if (__builtin_mul_overflow(n, d, &n) || n > kMaxElements) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ".shape ", ShapeString(shape), " is too large"));
    }
  }
  return n;
}

absl::Status CheckTensor(absl::string_view name, const TensorRef& t, DType dtype) {
  if (t.dtype != dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ".dtype is ", DTypeName(t.dtype), " but q.dtype is ", DTypeName(dtype)));
  }
  RINGATTN_ASSIGN_OR_RETURN(const int64_t n, CheckedProduct(name, t.shape));
  const uint64_t want = static_cast<uint64_t>(n) * DTypeSize(dtype);
  if (t.size_bytes != want) {
    return absl::InvalidArgumentError(absl::StrCat(name, " holds ", t.size_bytes,
                                                   " bytes but shape ", ShapeString(t.shape),
                                                   " of ", DTypeName(dtype), " needs ", want));
  }
  if (t.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".data is null"));
  }
  return absl::OkStatus();
}

absl::Status CheckSameShape(absl::string_view name, const TensorRef& t, absl::string_view ref_name,
                            const TensorRef& ref) {
  if (t.shape != ref.shape) {
    return absl::InvalidArgumentError(absl::StrCat(name, ".shape ", ShapeString(t.shape),
                                                   " must equal ", ref_name, ".shape ",
                                                   ShapeString(ref.shape)));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status CheckSpan(absl::string_view name, std::span<T> s, int64_t want) {
  if (static_cast<int64_t>(s.size()) != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " has ", s.size(), " elements, expected ", want));
  }
  return absl::OkStatus();
}

absl::StatusOr<MetaPtrs> CheckMeta(absl::string_view name, const TokenMetaRef& m, int64_t batch,
                                   int64_t len) {
  const int64_t n = batch * len;
  RINGATTN_RETURN_IF_ERROR(CheckSpan(absl::StrCat(name, ".doc"), m.doc, n));
  RINGATTN_RETURN_IF_ERROR(CheckSpan(absl::StrCat(name, ".vision"), m.vision, n));
  RINGATTN_RETURN_IF_ERROR(CheckSpan(absl::StrCat(name, ".padding"), m.padding, n));
  if (m.start < 0 || m.start > kMaxElements) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ".start must be in [0, 2^40], got ", m.start));
  }
  return MetaPtrs{m.doc.data(), m.vision.data(), m.padding.data(), m.start};
}

// The checks common to forward and backward: q, k, v and metadata.
absl::StatusOr<ChunkProblem> MakeProblem(const TensorRef& q, const TensorRef& k, const TensorRef& v,
                                         const TokenMetaRef& q_meta, const TokenMetaRef& kv_meta,
                                         const LayerConfig& layer) {
  RINGATTN_RETURN_IF_ERROR(ValidateLayer(layer));
  if (q.dtype != DType::kF32 && q.dtype != DType::kBF16 && q.dtype != DType::kF16) {
    return absl::InvalidArgumentError("q.dtype must be FP32, BF16 or FP16");
  }
  RINGATTN_RETURN_IF_ERROR(CheckTensor("q", q, q.dtype));
  RINGATTN_RETURN_IF_ERROR(CheckTensor("k", k, q.dtype));
  RINGATTN_RETURN_IF_ERROR(CheckTensor("v", v, q.dtype));

  ChunkProblem p;
  p.shape.dtype = q.dtype;
  p.shape.batch = q.shape[0];
  p.shape.heads = q.shape[1];
  p.shape.q_len = q.shape[2];
  p.shape.head_dim = q.shape[3];
  p.shape.kv_heads = k.shape[1];
  p.shape.kv_len = k.shape[2];
  if (k.shape[0] != p.shape.batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("k.shape[0] (batch) is ", k.shape[0], " but q.shape[0] is ", p.shape.batch));
  }
  if (k.shape[3] != p.shape.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("k.shape[3] (head dim) is ", k.shape[3],
                                                   " but q.shape[3] is ", p.shape.head_dim));
  }
  RINGATTN_RETURN_IF_ERROR(CheckSameShape("v", v, "k", k));
  if (p.shape.heads % p.shape.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "query heads (q.shape[1] = ", p.shape.heads,
        ") must be a multiple of key/value heads (k.shape[1] = ", p.shape.kv_heads, ")"));
  }
  if (p.shape.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head dim ", p.shape.head_dim, " is not supported (at most ", kMaxHeadDim, ")"));
  }
  RINGATTN_ASSIGN_OR_RETURN(p.q_meta, CheckMeta("q_meta", q_meta, p.shape.batch, p.shape.q_len));
  RINGATTN_ASSIGN_OR_RETURN(p.kv_meta,
                            CheckMeta("kv_meta", kv_meta, p.shape.batch, p.shape.kv_len));
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.mask = MaskRuleFor(layer);
  p.scale = layer.scale;
  return p;
}

}  // namespace

absl::Status ValidateLayer(const LayerConfig& layer) {
  if (layer.dropout != 0.0f) {
    return absl::InvalidArgumentError(absl::StrCat("layer.dropout is ", layer.dropout,
                                                   " but dropout is not supported; set it to 0"));
  }
  if (layer.kind == LayerKind::kSliding && layer.window < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer.window must be >= 1 on a sliding layer, got ", layer.window));
  }
  if (!std::isfinite(layer.scale) || layer.scale <= 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer.scale must be finite and positive, got ", layer.scale));
  }
  return absl::OkStatus();
}

absl::StatusOr<ForwardParams> MakeForwardParams(const ForwardChunkArgs& args) {
  RINGATTN_ASSIGN_OR_RETURN(const ChunkProblem p, MakeProblem(args.q, args.k, args.v, args.q_meta,
                                                              args.kv_meta, args.layer));
  const int64_t rows = p.shape.batch * p.shape.heads * p.shape.q_len;
  RINGATTN_RETURN_IF_ERROR(CheckSpan("out", args.out, rows * p.shape.head_dim));
  RINGATTN_RETURN_IF_ERROR(CheckSpan("lse", args.lse, rows));
  return ForwardParams{p, args.out.data(), args.lse.data()};
}

absl::StatusOr<BackwardParams> MakeBackwardParams(const BackwardChunkArgs& args) {
  RINGATTN_ASSIGN_OR_RETURN(const ChunkProblem p, MakeProblem(args.q, args.k, args.v, args.q_meta,
                                                              args.kv_meta, args.layer));
  RINGATTN_RETURN_IF_ERROR(CheckTensor("out", args.out, p.shape.dtype));
  RINGATTN_RETURN_IF_ERROR(CheckSameShape("out", args.out, "q", args.q));
  RINGATTN_RETURN_IF_ERROR(CheckTensor("dout", args.dout, p.shape.dtype));
  RINGATTN_RETURN_IF_ERROR(CheckSameShape("dout", args.dout, "q", args.q));
  const int64_t rows = p.shape.batch * p.shape.heads * p.shape.q_len;
  const int64_t kv_elems = p.shape.batch * p.shape.kv_heads * p.shape.kv_len * p.shape.head_dim;
  RINGATTN_RETURN_IF_ERROR(CheckSpan("lse", args.lse, rows));
  RINGATTN_RETURN_IF_ERROR(CheckSpan("dq", args.dq, rows * p.shape.head_dim));
  RINGATTN_RETURN_IF_ERROR(CheckSpan("dk", args.dk, kv_elems));
  RINGATTN_RETURN_IF_ERROR(CheckSpan("dv", args.dv, kv_elems));
  BackwardParams b;
  b.problem = p;
  b.out = args.out.data;
  b.dout = args.dout.data;
  b.lse = args.lse.data();
  b.dq = args.dq.data();
  b.dk = args.dk.data();
  b.dv = args.dv.data();
  return b;
}

}  // namespace ringattn::kernels
