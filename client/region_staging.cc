#include "client/region_staging.h"

#include <cstring>
#include <initializer_list>
#include <utility>

#include "proto/wire/tensor_stream.h"

namespace ringattn::client {
namespace {

constexpr uint64_t kAlign = 64;

}  // namespace

absl::StatusOr<std::unique_ptr<RegionStaging>> RegionStaging::Create(AttentionClient& client,
                                                                     const ForwardInputs& shapes,
                                                                     const std::string& name) {
  ForwardInputs s = shapes;
  s.q = s.k = s.v = {};
  s.doc_ids.reset();
  s.vision_groups.reset();
  s.padding_mask.reset();
  s.input_regions.clear();
  s.output_regions.clear();
  std::unique_ptr<RegionStaging> r(new RegionStaging(client, std::move(s), name));
  const auto tokens = static_cast<uint64_t>(shapes.batch * shapes.seq_len);
  const uint64_t elem = wire::WireDTypeSize(shapes.dtype);
  const uint64_t q_elems = tokens * shapes.heads * shapes.head_dim;
  const uint64_t kv_elems = tokens * shapes.kv_heads * shapes.head_dim;
  uint64_t size = 0;
  for (auto [tensor, bytes] :
       std::initializer_list<std::pair<const char*, uint64_t>>{{"q", q_elems * elem},
                                                               {"k", kv_elems * elem},
                                                               {"v", kv_elems * elem},
                                                               {"doc_ids", tokens * 4},
                                                               {"vision_groups", tokens * 4},
                                                               {"padding_mask", tokens},
                                                               {"dout", q_elems * elem},
                                                               {"out", q_elems * elem},
                                                               {"lse", tokens * shapes.heads * 4},
                                                               {"dq", q_elems * 4},
                                                               {"dk", kv_elems * 4},
                                                               {"dv", kv_elems * 4}}) {
    r->at_[tensor] = RegionRef{name, size, bytes};
    size += (bytes + kAlign - 1) / kAlign * kAlign;
  }
  absl::StatusOr<std::unique_ptr<SharedRegion>> region = SharedRegion::CreateUnique(name, size);
  if (!region.ok()) return region.status();
  r->region_ = *std::move(region);
  if (absl::Status s = client.RegisterRegion(name, r->region_->shm_name(), size); !s.ok()) return s;
  r->registered_ = true;
  return r;
}

RegionStaging::~RegionStaging() {
  if (registered_) (void)client_.UnregisterRegion(name_);
}

std::span<std::byte> RegionStaging::Bytes(const std::string& name) {
  const RegionRef& r = at_.at(name);
  return region_->bytes().subspan(r.offset, r.byte_size);
}

std::span<const std::byte> RegionStaging::Bytes(const std::string& name) const {
  const RegionRef& r = at_.at(name);
  return std::as_const(*region_).bytes().subspan(r.offset, r.byte_size);
}

void RegionStaging::Stage(const ForwardInputs& in, std::span<const std::byte> dout) {
  auto put = [&](const char* name, std::span<const std::byte> data) {
    std::span<std::byte> dst = Bytes(name);
    std::memcpy(dst.data(), data.data(), std::min(dst.size(), data.size()));
  };
  put("q", in.q);
  put("k", in.k);
  put("v", in.v);
  if (!dout.empty()) put("dout", dout);
  // Metadata the caller has is named by reference; the rest keeps the
  // service's defaults.
  shapes_.input_regions.clear();
  if (in.doc_ids) put("doc_ids", std::as_bytes(*in.doc_ids));
  if (in.vision_groups) put("vision_groups", std::as_bytes(*in.vision_groups));
  if (in.padding_mask) put("padding_mask", std::as_bytes(*in.padding_mask));
  for (const char* name : {"q", "k", "v"}) shapes_.input_regions[name] = at_.at(name);
  if (in.doc_ids) shapes_.input_regions["doc_ids"] = at_.at("doc_ids");
  if (in.vision_groups) shapes_.input_regions["vision_groups"] = at_.at("vision_groups");
  if (in.padding_mask) shapes_.input_regions["padding_mask"] = at_.at("padding_mask");
  shapes_.layer = in.layer;
}

absl::StatusOr<ForwardOutputs> RegionStaging::Forward(absl::Duration timeout) {
  ForwardInputs in = shapes_;
  in.output_regions = {{"out", at_.at("out")}, {"lse", at_.at("lse")}};
  return client_.Forward(in, timeout);
}

absl::StatusOr<BackwardOutputs> RegionStaging::Backward(const std::string& handle,
                                                        absl::Duration timeout) {
  BackwardRegions regions;
  regions.dout = at_.at("dout");
  regions.outputs = {{"dq", at_.at("dq")}, {"dk", at_.at("dk")}, {"dv", at_.at("dv")}};
  return client_.Backward(shapes_, handle, {}, regions, timeout);
}

void RegionStaging::CopyOut(ForwardOutputs& f) const {
  const std::span<const std::byte> out = Bytes("out");
  f.out.assign(out.begin(), out.end());
  f.lse = wire::BytesAs<float>(Bytes("lse"));
}

void RegionStaging::CopyOut(BackwardOutputs& g) const {
  g.dq = wire::BytesAs<float>(Bytes("dq"));
  g.dk = wire::BytesAs<float>(Bytes("dk"));
  g.dv = wire::BytesAs<float>(Bytes("dv"));
}

}  // namespace ringattn::client
