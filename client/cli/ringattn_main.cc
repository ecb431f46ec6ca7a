// ringattn: the command-line client. `ringattn help` lists the commands
// (demo, serve, status, synthetic, forward, prepare, backward, release,
// bench) and
// `ringattn help COMMAND` what one takes; client/cli/usage.cc holds both.

#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "client/attention_client.h"
#include "client/cli/usage.h"
#include "client/local_cluster.h"
#include "client/npy.h"
#include "client/region_staging.h"
#include "client/synthetic_inputs.h"
#include "kernels/convert.h"
#include "kernels/reference/compare.h"
#include "kernels/reference/dense_attention.h"
#include "kernels/reference/synthetic_batch.h"
#include "proto/wire/dtype.h"

ABSL_FLAG(std::string, coordinator, "",
          "Address HOST:PORT of a running coordinator (every command but demo and serve).");
ABSL_FLAG(int, cp, 4, "Workers of a local cluster.");
ABSL_FLAG(int, worker_threads, 1, "Kernel threads per local worker.");
ABSL_FLAG(int64_t, seq_len, 1024, "Sequence length of the synthetic batch.");
ABSL_FLAG(int64_t, batch, 1, "Batch size of the synthetic batch.");
ABSL_FLAG(int64_t, heads, 4, "Query heads of the synthetic batch.");
ABSL_FLAG(std::optional<int64_t>, kv_heads, std::nullopt,
          "Key/value heads. demo, synthetic, bench: default 2. backward: the session's by "
          "default; when given, the coordinator checks it against the session before the "
          "backward runs.");
ABSL_FLAG(int64_t, window, 512, "Sliding window of the sliding layer.");
ABSL_FLAG(std::string, dtype, "",
          "FP32, BF16 or FP16. demo, synthetic: the batch's (default FP32). forward, backward: "
          "by default the .npy files' (float32, float16); when given it must be theirs, and "
          "uint16 files need BF16 (raw bfloat16 bits).");
ABSL_FLAG(uint64_t, seed, 42, "Seed of the synthetic batch.");
ABSL_FLAG(std::string, q, "", "forward: q.npy [B,H,S,D] (float32, float16, or uint16 bf16 bits).");
ABSL_FLAG(std::string, k, "", "forward: k.npy [B,Hkv,S,D].");
ABSL_FLAG(std::string, v, "", "forward: v.npy [B,Hkv,S,D].");
ABSL_FLAG(std::string, doc_ids, "", "forward: optional doc_ids.npy [B,S] int32.");
ABSL_FLAG(std::string, vision_groups, "", "forward: optional vision_groups.npy [B,S] int32.");
ABSL_FLAG(std::string, padding_mask, "", "forward: optional padding_mask.npy [B,S] bool/uint8.");
ABSL_FLAG(std::string, attention_mask, "",
          "forward, prepare: optional Hugging Face attention_mask.npy, [B,S] (nonzero = real "
          "token) or [B,1,S,S] (bool/int nonzero = attend; float additive, 0 = attend); "
          "bool, int32, int64, float32 or float16.");
ABSL_FLAG(std::string, mm_token_type_ids, "",
          "forward, prepare: optional mm_token_type_ids.npy [B,S] int32/int64 (0 text, 1 image, "
          "2 video); each run of image tokens is one vision group.");
ABSL_FLAG(std::string, packed_seq_ids, "",
          "forward, prepare: optional packed_seq_ids.npy [B,S] int32/int64: 1-based documents, "
          "0 = padding.");
ABSL_FLAG(std::string, input_ids, "", "prepare: input_ids.npy [B,S] int32/int64.");
ABSL_FLAG(std::string, inputs_embeds, "",
          "prepare: inputs_embeds.npy [B,S,E] float32, float16 or uint16 (bf16 bits), instead "
          "of --input_ids.");
ABSL_FLAG(std::string, labels, "", "prepare: labels.npy [B,S] int32/int64.");
ABSL_FLAG(std::string, loss_mask, "",
          "prepare: loss_mask.npy [B,S] (bool, int or float); used when --labels is absent.");
ABSL_FLAG(std::string, position_ids, "",
          "prepare: optional position_ids.npy [B,S] or [3,B,S] (multimodal RoPE) int32/int64; "
          "default 0..S-1.");
ABSL_FLAG(std::optional<int>, prepare_cp, std::nullopt,
          "prepare: shards for a ring of this many ranks (default: the coordinator's).");
ABSL_FLAG(int64_t, pad_token_id, 0, "prepare: the token id input_ids are padded with.");
ABSL_FLAG(bool, shards, false, "prepare: also write every rank's shard, as rank<r>_<name>.npy.");
ABSL_FLAG(std::string, dout, "", "backward: dout.npy [B,H,S,D] in the forward dtype.");
ABSL_FLAG(std::string, handle, "", "backward, release: the session handle forward printed.");
ABSL_FLAG(std::string, out_dir, ".",
          "forward, backward: an existing, writable directory for the result .npy files "
          "(checked before sending).");
ABSL_FLAG(bool, keep_session, false,
          "forward: keep the session open when writing the outputs fails (by default it is "
          "released, so it holds no worker memory until it expires).");
ABSL_FLAG(bool, sliding, false, "forward: a sliding layer with --window (else full).");
ABSL_FLAG(double, scale, 0.0, "forward: softmax scale; 0 = 1/sqrt(D).");
ABSL_FLAG(std::string, layout, "auto",
          "forward, bench: shard layout, auto (the coordinator picks per layer), contiguous or "
          "zigzag.");
ABSL_FLAG(int, iterations, 5, "bench: forward+backward calls to time.");
ABSL_FLAG(int64_t, head_dim, 128, "bench: head dim.");
ABSL_FLAG(bool, shm, false,
          "Pass tensors through a shared-memory region of this process instead of streaming "
          "them (the coordinator and workers must be on this host).");
ABSL_FLAG(bool, tls, false,
          "Reach the coordinator over TLS (implied by --tls_ca_file, --tls_cert_file).");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA that verifies the coordinator (default: the system's); demo/serve: the daemons' "
          "--tls_ca_file.");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM client certificate, for coordinators that require one; demo/serve: every daemon's "
          "certificate, shown by this client too.");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file.");
ABSL_FLAG(std::string, tls_server_name, "",
          "Name expected in the coordinator's certificate (default: the host of --coordinator).");
ABSL_FLAG(bool, tls_require_client_cert, true,
          "demo/serve: daemons with --tls_ca_file require client certificates.");
ABSL_FLAG(std::string, auth_token_file, "",
          "Token file; its first token is sent as 'authorization: Bearer'. demo/serve: the "
          "coordinator's client tokens.");
ABSL_FLAG(std::string, cluster_token_file, "",
          "demo/serve: the token the local coordinator and workers share.");

namespace ringattn::client {
namespace {

// A client of `address` with the TLS and token flags; exits on a file that
// cannot be used.
std::unique_ptr<AttentionClient> ConnectFromFlags(const std::string& address) {
  wire::ChannelSecurity security;
  security.tls = absl::GetFlag(FLAGS_tls);
  security.ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  security.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  security.key_file = absl::GetFlag(FLAGS_tls_key_file);
  security.server_name = absl::GetFlag(FLAGS_tls_server_name);
  absl::StatusOr<std::unique_ptr<AttentionClient>> c = [&]() {
    if (!absl::GetFlag(FLAGS_auth_token_file).empty()) {
      absl::StatusOr<std::string> token =
          wire::ReadFirstToken(absl::GetFlag(FLAGS_auth_token_file));
      if (!token.ok()) return absl::StatusOr<std::unique_ptr<AttentionClient>>(token.status());
      security.token = *std::move(token);
    }
    return AttentionClient::Connect(address, security);
  }();
  if (!c.ok()) {
    std::fprintf(stderr, "error: %s\n", c.status().ToString().c_str());
    std::exit(2);
  }
  return *std::move(c);
}

struct Layer {
  std::string name;
  int64_t head_dim;
  kernels::LayerConfig config;
};

// Forward and backward calls, through a shared-memory region with --shm:
// every tensor is staged in a region of this process and named by
// reference, and the outputs are copied back as a streamed call fills them.
class Calls {
 public:
  explicit Calls(AttentionClient& c) : c_(c), shm_(absl::GetFlag(FLAGS_shm)) {}

  // `dout` (may be empty) is staged with the inputs for a later Backward.
  absl::StatusOr<ForwardOutputs> Forward(const ForwardInputs& in,
                                         std::span<const std::byte> dout = {}) {
    if (!shm_) return c_.Forward(in);
    staging_.reset();  // Unregisters the last call's region first.
    absl::StatusOr<std::unique_ptr<RegionStaging>> staging =
        RegionStaging::Create(c_, in, absl::StrCat("cli-", getpid(), "-", next_++));
    if (!staging.ok()) return staging.status();
    staging_ = *std::move(staging);
    staging_->Stage(in, dout);
    absl::StatusOr<ForwardOutputs> f = staging_->Forward();
    if (f.ok()) staging_->CopyOut(*f);
    return f;
  }
  absl::StatusOr<BackwardOutputs> Backward(const ForwardInputs& in, const std::string& handle,
                                           std::span<const std::byte> dout) {
    if (!staging_) return c_.Backward(in, handle, dout);
    absl::StatusOr<BackwardOutputs> g = staging_->Backward(handle);
    if (g.ok()) {
      staging_->CopyOut(*g);
      g->kv_heads = in.kv_heads;
    }
    return g;
  }

 private:
  AttentionClient& c_;
  const bool shm_;
  int next_ = 0;
  std::unique_ptr<RegionStaging> staging_;
};

bool Report(const char* what, const kernels::reference::ErrorStats& e, double tol) {
  const bool ok = e.Within(tol);
  std::printf("  %-4s max|err| %.3e  rel %.3e  tol %.1e  nan %lld  %s\n", what, e.max_abs_err,
              e.relative(), tol, static_cast<long long>(e.nans), ok ? "ok" : "FAIL");
  return ok;
}

void PrintMetrics(const char* what, const attention::v1::CallMetrics& m) {
  std::printf("  %-8s %8.1f ms  %7.2f GFLOP/s (pairs allowed by position)\n", what,
              1e3 * m.seconds(), m.flops_per_second() * 1e-9);
  for (const auto& r : m.ranks()) {
    std::printf("    rank %d: step %7.1f ms  compute %7.1f ms  comm wait %6.1f ms  sent %.1f MiB\n",
                r.rank(), 1e3 * r.total_seconds(), 1e3 * r.compute_seconds(),
                1e3 * r.comm_wait_seconds(), static_cast<double>(r.bytes_sent()) / 1048576.0);
  }
}

// The Gemma-4-like batch through the service, checked against the oracle.
int Synthetic(const std::string& address) {
  const std::string name = absl::GetFlag(FLAGS_dtype).empty() ? "FP32" : absl::GetFlag(FLAGS_dtype);
  const absl::StatusOr<kernels::DType> parsed = wire::ParseDType(name);
  if (!parsed.ok()) {
    std::fprintf(stderr, "error: --dtype must be FP32, BF16 or FP16\n");
    return 2;
  }
  const kernels::DType dtype = *parsed;
  auto c = ConnectFromFlags(address);
  absl::StatusOr<attention::v1::ClusterStatusResponse> status = c->Status();
  if (!status.ok()) {
    std::fprintf(stderr, "error: %s\n", status.status().ToString().c_str());
    return 1;
  }
  kernels::LayerConfig sliding;
  sliding.kind = kernels::LayerKind::kSliding;
  sliding.window = absl::GetFlag(FLAGS_window);
  kernels::LayerConfig full;
  const std::vector<Layer> layers = {{"sliding", 256, sliding}, {"full", 512, full}};
  kernels::reference::BatchShape shape{absl::GetFlag(FLAGS_batch), absl::GetFlag(FLAGS_heads),
                                       absl::GetFlag(FLAGS_kv_heads).value_or(2),
                                       absl::GetFlag(FLAGS_seq_len), 0};
  std::printf("ringattn: B=%lld H=%lld Hkv=%lld S=%lld %s through a ring of %d workers at %s\n",
              static_cast<long long>(shape.batch), static_cast<long long>(shape.heads),
              static_cast<long long>(shape.kv_heads), static_cast<long long>(shape.seq_len),
              name.c_str(), status->cp(), address.c_str());
  std::printf("batch: two packed documents, one image block, right padding%s\n",
              absl::GetFlag(FLAGS_shm) ? "; tensors in shared memory" : "");
  Calls calls(*c);
  bool all_ok = true;
  uint64_t seed = absl::GetFlag(FLAGS_seed);
  for (const Layer& layer : layers) {
    shape.head_dim = layer.head_dim;
    kernels::LayerConfig config = layer.config;
    config.scale = 1.0f;  // Gemma 4: q/k norm instead of 1/sqrt(D).
    const auto batch = kernels::reference::MakeSyntheticBatch(
        shape, {kernels::reference::GemmaLikeLayout(shape.seq_len)}, dtype, seed++,
        kernels::reference::AmplitudeForLogitStd(2.0, layer.head_dim, config.scale));
    const std::unique_ptr<EncodedBatch> encoded = EncodeBatch(batch, config);
    const ForwardInputs& in = encoded->in;
    const auto dout = std::as_bytes(std::span(encoded->dout));
    absl::StatusOr<ForwardOutputs> f = calls.Forward(in, dout);
    if (!f.ok()) {
      std::fprintf(stderr, "error: forward: %s\n", f.status().ToString().c_str());
      return 1;
    }
    absl::StatusOr<BackwardOutputs> g = calls.Backward(in, f->session.handle(), dout);
    if (!g.ok()) {
      std::fprintf(stderr, "error: backward: %s\n", g.status().ToString().c_str());
      return 1;
    }
    (void)c->Release(f->session.handle());
    std::vector<float> out(f->out.size() / kernels::DTypeSize(dtype));
    kernels::ToF32(dtype, f->out.data(), static_cast<int64_t>(out.size()), out.data());
    const auto problem = kernels::reference::ToDenseProblem(batch, config);
    const auto want = kernels::reference::DenseForward(problem);
    const std::vector<double> dout64(batch.dout.begin(), batch.dout.end());
    const auto grads = kernels::reference::DenseBackward(problem, dout64);
    std::printf("%s layer (D=%lld): session %s, padded to %lld\n", layer.name.c_str(),
                static_cast<long long>(layer.head_dim), f->session.handle().c_str(),
                static_cast<long long>(f->session.padded_len()));
    const double out_tol = kernels::reference::OutputTolerance(dtype);
    const double grad_tol = kernels::reference::GradientTolerance(dtype);
    all_ok &= Report("O", kernels::reference::Compare(out, want.out), out_tol);
    all_ok &= Report("LSE", kernels::reference::Compare(f->lse, want.lse), 1e-5);
    all_ok &= Report("dQ", kernels::reference::Compare(g->dq, grads.dq), grad_tol);
    all_ok &= Report("dK", kernels::reference::Compare(g->dk, grads.dk), grad_tol);
    all_ok &= Report("dV", kernels::reference::Compare(g->dv, grads.dv), grad_tol);
    PrintMetrics("forward", f->metrics);
    PrintMetrics("backward", g->metrics);
  }
  std::printf("%s\n", all_ok ? "PASS: every result within tolerance of the fp64 oracle"
                             : "FAIL: some result outside tolerance");
  return all_ok ? 0 : 1;
}

size_t ItemSizeOf(const NpyArray& a) {
  return a.shape.empty() ? 0 : a.data.size() / std::max<size_t>(1, [&] {
                                 size_t n = 1;
                                 for (int64_t d : a.shape) n *= static_cast<size_t>(d);
                                 return n;
                               }());
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 1;
}

// A mistake in the flags or files, found before anything is sent.
int BadInvocation(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 2;
}

// The wire dtype of the tensor files `arrays` (paths `paths`): one dtype for
// all of them, float32, float16, or uint16 holding bf16 bits when
// --dtype=BF16, and --dtype's when it is given.
// --layout as the wire's enum.
absl::StatusOr<attention::v1::ShardLayout> LayoutFromFlag() {
  const std::string name = absl::GetFlag(FLAGS_layout);
  if (name == "auto") return attention::v1::SHARD_LAYOUT_AUTO;
  if (name == "contiguous") return attention::v1::SHARD_LAYOUT_CONTIGUOUS;
  if (name == "zigzag") return attention::v1::SHARD_LAYOUT_ZIGZAG;
  return absl::InvalidArgumentError("--layout must be auto, contiguous or zigzag, got '" + name +
                                    "'");
}

absl::StatusOr<std::string> WireDType(const std::vector<const NpyArray*>& arrays,
                                      const std::vector<std::string>& paths) {
  auto numpy_name = [](const std::string& descr) -> std::string {
    if (descr == "<f4") return "float32";
    if (descr == "<f2") return "float16";
    if (descr == "<u2") return "uint16";
    return descr;
  };
  for (size_t i = 1; i < arrays.size(); ++i) {
    if (arrays[i]->descr != arrays[0]->descr) {
      return absl::InvalidArgumentError(
          absl::StrCat(paths[i], " holds ", numpy_name(arrays[i]->descr), " but ", paths[0],
                       " holds ", numpy_name(arrays[0]->descr)));
    }
  }
  const std::string& descr = arrays[0]->descr;
  const std::string flag = absl::GetFlag(FLAGS_dtype);
  std::optional<kernels::DType> asked;
  if (!flag.empty()) {
    const absl::StatusOr<kernels::DType> parsed = wire::ParseDType(flag);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--dtype=", flag, " is not FP32, BF16 or FP16"));
    }
    asked = *parsed;
  }
  std::optional<kernels::DType> held;
  if (descr == "<f4") held = kernels::DType::kF32;
  if (descr == "<f2") held = kernels::DType::kF16;
  if (descr == "<u2") {
    if (asked != kernels::DType::kBF16) {
      return absl::InvalidArgumentError(
          absl::StrCat(paths[0], " holds uint16", asked ? absl::StrCat(", not ", flag) : "",
                       ": pass --dtype=BF16 if it holds raw bfloat16 bits"));
    }
    held = kernels::DType::kBF16;
  }
  if (!held) {
    return absl::InvalidArgumentError(
        absl::StrCat(paths[0], " holds ", descr,
                     ": use float32, float16, or uint16 bfloat16 bits with --dtype=BF16"));
  }
  if (asked && *asked != *held) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--dtype=", wire::DTypeName(*asked), " but ", paths[0], " holds ", numpy_name(descr), " (",
        wire::DTypeName(*held), "): convert the files or pass --dtype=", wire::DTypeName(*held)));
  }
  return std::string(wire::DTypeName(*held));
}

// --out_dir exists and takes a new file: checked before a call is sent, so
// a typo costs no computation and leaves no session behind.
absl::Status CheckOutDir() {
  const std::string dir = absl::GetFlag(FLAGS_out_dir);
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--out_dir=", dir, " is not an existing directory"));
  }
  std::string probe = dir + "/.ringattn-write-check-XXXXXX";
  const int fd = mkstemp(probe.data());
  if (fd < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--out_dir=", dir, " is not writable: ", std::strerror(errno)));
  }
  close(fd);
  unlink(probe.c_str());
  return absl::OkStatus();
}

absl::Status WriteFloat(const std::string& name, std::vector<int64_t> shape,
                        std::span<const std::byte> data, const std::string& descr) {
  NpyArray a{descr, std::move(shape), {data.begin(), data.end()}};
  const std::string path = absl::GetFlag(FLAGS_out_dir) + "/" + name + ".npy";
  absl::Status s = WriteNpy(path, a);
  if (s.ok()) std::printf("wrote %s\n", path.c_str());
  return s;
}

// The wire dtype of an .npy file's element type, as PrepareBatch and the
// metadata inputs take them (uint16 holds bfloat16 bits).
std::optional<std::string> WireDTypeOfDescr(const std::string& descr) {
  static const auto* names = new std::map<std::string, std::string>{
      {"<i8", "INT64"}, {"<i4", "INT32"}, {"|b1", "BOOL"}, {"|u1", "BOOL"},
      {"<f4", "FP32"},  {"<f2", "FP16"},  {"<u2", "BF16"}};
  auto it = names->find(descr);
  if (it == names->end()) return std::nullopt;
  return it->second;
}

// And back, for writing what came back.
std::string DescrOfWireDType(const std::string& dtype) {
  if (dtype == "INT64") return "<i8";
  if (dtype == "INT32") return "<i4";
  if (dtype == "BOOL") return "|b1";
  if (dtype == "FP16") return "<f2";
  if (dtype == "BF16") return "<u2";
  return "<f4";
}

// Each (name, path) with a path, read as .npy into `out` under its name.
absl::Status ReadTensorFiles(const std::vector<std::pair<std::string, std::string>>& files,
                             std::map<std::string, NpyArray>& out) {
  for (const auto& [name, path] : files) {
    if (path.empty()) continue;
    absl::StatusOr<NpyArray> a = ReadNpy(path);
    if (!a.ok()) return a.status();
    out[name] = *std::move(a);
  }
  return absl::OkStatus();
}

// A tensor file as a wire tensor; an error naming the flag for an element
// type the wire does not carry.
absl::StatusOr<TensorView> ViewOf(const std::string& name, const NpyArray& a) {
  const std::optional<std::string> dtype = WireDTypeOfDescr(a.descr);
  if (!dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " holds ", a.descr,
                     ": use bool, int32, int64, float32, float16 or uint16 (bfloat16 bits)"));
  }
  return TensorView{*dtype, a.shape, a.data};
}

int ForwardFromFiles(const std::string& address) {
  std::vector<NpyArray> qkv;
  const std::vector<std::string> paths = {absl::GetFlag(FLAGS_q), absl::GetFlag(FLAGS_k),
                                          absl::GetFlag(FLAGS_v)};
  for (const std::string& path : paths) {
    if (path.empty()) {
      return BadInvocation(absl::InvalidArgumentError("forward needs --q, --k and --v"));
    }
    absl::StatusOr<NpyArray> a = ReadNpy(path);
    if (!a.ok()) return BadInvocation(a.status());
    if (a->shape.size() != 4) {
      return BadInvocation(absl::InvalidArgumentError(path + " must be 4-D [B, heads, S, D]"));
    }
    qkv.push_back(*std::move(a));
  }
  absl::StatusOr<std::string> dtype = WireDType({&qkv[0], &qkv[1], &qkv[2]}, paths);
  if (!dtype.ok()) return BadInvocation(dtype.status());
  ForwardInputs in;
  in.dtype = *dtype;
  in.batch = qkv[0].shape[0];
  in.heads = qkv[0].shape[1];
  in.kv_heads = qkv[1].shape[1];
  in.seq_len = qkv[0].shape[2];
  in.head_dim = qkv[0].shape[3];
  in.q = qkv[0].data;
  in.k = qkv[1].data;
  in.v = qkv[2].data;
  std::vector<NpyArray> meta(3);
  const std::string meta_paths[] = {absl::GetFlag(FLAGS_doc_ids),
                                    absl::GetFlag(FLAGS_vision_groups),
                                    absl::GetFlag(FLAGS_padding_mask)};
  for (int i = 0; i < 3; ++i) {
    if (meta_paths[i].empty()) continue;
    absl::StatusOr<NpyArray> a = ReadNpy(meta_paths[i]);
    if (!a.ok()) return BadInvocation(a.status());
    meta[i] = *std::move(a);
    const size_t want = i < 2 ? 4 : 1;
    if (ItemSizeOf(meta[i]) != want) {
      return BadInvocation(absl::InvalidArgumentError(
          meta_paths[i] + (i < 2 ? " must be int32" : " must be bool/uint8")));
    }
  }
  if (!meta_paths[0].empty()) {
    in.doc_ids =
        std::span(reinterpret_cast<const int32_t*>(meta[0].data.data()), meta[0].data.size() / 4);
  }
  if (!meta_paths[1].empty()) {
    in.vision_groups =
        std::span(reinterpret_cast<const int32_t*>(meta[1].data.data()), meta[1].data.size() / 4);
  }
  if (!meta_paths[2].empty()) {
    in.padding_mask =
        std::span(reinterpret_cast<const uint8_t*>(meta[2].data.data()), meta[2].data.size());
  }
  std::map<std::string, NpyArray> hf;
  if (absl::Status s =
          ReadTensorFiles({{"attention_mask", absl::GetFlag(FLAGS_attention_mask)},
                           {"mm_token_type_ids", absl::GetFlag(FLAGS_mm_token_type_ids)},
                           {"packed_seq_ids", absl::GetFlag(FLAGS_packed_seq_ids)}},
                          hf);
      !s.ok()) {
    return BadInvocation(s);
  }
  for (auto& [name, a] : hf) {
    absl::StatusOr<TensorView> view = ViewOf(name, a);
    if (!view.ok()) return BadInvocation(view.status());
    if (name == "attention_mask") in.attention_mask = *view;
    if (name == "mm_token_type_ids") in.mm_token_type_ids = *view;
    if (name == "packed_seq_ids") in.packed_seq_ids = *view;
  }
  kernels::LayerConfig layer;
  if (absl::GetFlag(FLAGS_sliding)) layer.kind = kernels::LayerKind::kSliding;
  layer.window = absl::GetFlag(FLAGS_window);
  in.layer = ToWire(layer);
  if (absl::GetFlag(FLAGS_scale) > 0) {
    in.layer.set_scale(static_cast<float>(absl::GetFlag(FLAGS_scale)));
  } else {
    in.layer.clear_scale();
  }
  absl::StatusOr<attention::v1::ShardLayout> shard_layout = LayoutFromFlag();
  if (!shard_layout.ok()) return BadInvocation(shard_layout.status());
  in.layout = *shard_layout;
  if (absl::Status s = CheckOutDir(); !s.ok()) return BadInvocation(s);
  const double mib = static_cast<double>(in.q.size() + in.k.size() + in.v.size()) / 1048576.0;
  std::printf("forward: sending %.1f MiB to %s ...\n", mib, address.c_str());
  std::fflush(stdout);
  auto c = ConnectFromFlags(address);
  Calls calls(*c);
  absl::StatusOr<ForwardOutputs> f = calls.Forward(in);
  if (!f.ok()) return Fail(f.status());
  // The handle first: whatever fails below, the user knows the session.
  const std::string& handle = f->session.handle();
  std::printf("handle %s\n", handle.c_str());
  std::fflush(stdout);
  PrintMetrics("forward", f->metrics);
  const std::string descr = qkv[0].descr;
  absl::Status s = WriteFloat("out", {in.batch, in.heads, in.seq_len, in.head_dim}, f->out, descr);
  if (s.ok()) {
    s = WriteFloat("lse", {in.batch, in.heads, in.seq_len}, std::as_bytes(std::span(f->lse)),
                   "<f4");
  }
  if (s.ok()) return 0;
  Fail(s);
  if (absl::GetFlag(FLAGS_keep_session)) {
    std::fprintf(stderr, "session %s kept open (--keep_session)\n", handle.c_str());
  } else if (const absl::Status r = c->Release(handle); r.ok()) {
    std::fprintf(stderr, "session %s released (--keep_session keeps it)\n", handle.c_str());
  } else {
    std::fprintf(stderr, "session %s not released: %s\n", handle.c_str(), r.ToString().c_str());
  }
  return 1;
}

// A training batch from .npy files through PrepareBatch: every padded
// tensor written to --out_dir as <name>.npy, and with --shards every rank's
// as rank<r>_<name>.npy.
int PrepareFromFiles(const std::string& address) {
  if (absl::GetFlag(FLAGS_input_ids).empty() == absl::GetFlag(FLAGS_inputs_embeds).empty()) {
    return BadInvocation(
        absl::InvalidArgumentError("prepare needs one of --input_ids or --inputs_embeds"));
  }
  if (absl::GetFlag(FLAGS_labels).empty() && absl::GetFlag(FLAGS_loss_mask).empty()) {
    return BadInvocation(absl::InvalidArgumentError("prepare needs --labels or --loss_mask"));
  }
  std::map<std::string, NpyArray> files;
  if (absl::Status s =
          ReadTensorFiles({{"input_ids", absl::GetFlag(FLAGS_input_ids)},
                           {"inputs_embeds", absl::GetFlag(FLAGS_inputs_embeds)},
                           {"labels", absl::GetFlag(FLAGS_labels)},
                           {"loss_mask", absl::GetFlag(FLAGS_loss_mask)},
                           {"position_ids", absl::GetFlag(FLAGS_position_ids)},
                           {"attention_mask", absl::GetFlag(FLAGS_attention_mask)},
                           {"mm_token_type_ids", absl::GetFlag(FLAGS_mm_token_type_ids)},
                           {"packed_seq_ids", absl::GetFlag(FLAGS_packed_seq_ids)}},
                          files);
      !s.ok()) {
    return BadInvocation(s);
  }
  PrepareBatchInputs in;
  for (const auto& [name, a] : files) {
    absl::StatusOr<TensorView> view = ViewOf(name, a);
    if (!view.ok()) return BadInvocation(view.status());
    in.tensors[name] = *view;
  }
  in.pad_token_id = absl::GetFlag(FLAGS_pad_token_id);
  if (const std::optional<int> cp = absl::GetFlag(FLAGS_prepare_cp)) {
    if (*cp < 1) return BadInvocation(absl::InvalidArgumentError("--prepare_cp must be >= 1"));
    in.cp = *cp;
  }
  in.include_shards = absl::GetFlag(FLAGS_shards);
  if (absl::Status s = CheckOutDir(); !s.ok()) return BadInvocation(s);
  auto c = ConnectFromFlags(address);
  absl::StatusOr<PrepareBatchOutputs> p = c->PrepareBatch(in);
  if (!p.ok()) return Fail(p.status());
  std::printf("prepared B=%lld S=%lld -> P=%lld for cp=%d (shard length %lld)\n",
              static_cast<long long>(p->info.batch()), static_cast<long long>(p->info.seq_len()),
              static_cast<long long>(p->info.padded_len()), p->info.cp(),
              static_cast<long long>(p->info.shard_len()));
  auto write = [&](const std::string& file, const Tensor& t) {
    return WriteFloat(file, t.shape, t.data, DescrOfWireDType(t.dtype));
  };
  for (const auto& [name, t] : p->tensors) {
    if (absl::Status s = write(name, t); !s.ok()) return Fail(s);
  }
  for (size_t r = 0; r < p->shards.size(); ++r) {
    for (const auto& [name, t] : p->shards[r]) {
      if (absl::Status s = write(absl::StrCat("rank", r, "_", name), t); !s.ok()) return Fail(s);
    }
  }
  return 0;
}

int BackwardFromFiles(const std::string& address) {
  if (absl::GetFlag(FLAGS_handle).empty() || absl::GetFlag(FLAGS_dout).empty()) {
    return BadInvocation(absl::InvalidArgumentError("backward needs --handle and --dout"));
  }
  absl::StatusOr<NpyArray> dout = ReadNpy(absl::GetFlag(FLAGS_dout));
  if (!dout.ok()) return BadInvocation(dout.status());
  absl::StatusOr<std::string> dtype = WireDType({&*dout}, {absl::GetFlag(FLAGS_dout)});
  if (!dtype.ok()) return BadInvocation(dtype.status());
  if (dout->shape.size() != 4) {
    return BadInvocation(absl::InvalidArgumentError("--dout must be 4-D [B, H, S, D]"));
  }
  const std::optional<int64_t> kv_heads = absl::GetFlag(FLAGS_kv_heads);
  if (kv_heads && *kv_heads < 1) {
    return BadInvocation(absl::InvalidArgumentError("--kv_heads must be >= 1"));
  }
  if (absl::Status s = CheckOutDir(); !s.ok()) return BadInvocation(s);
  ForwardInputs shapes;
  shapes.dtype = *dtype;
  shapes.batch = dout->shape[0];
  shapes.heads = dout->shape[1];
  shapes.kv_heads = kv_heads.value_or(0);  // 0: the session's.
  shapes.seq_len = dout->shape[2];
  shapes.head_dim = dout->shape[3];
  std::printf("backward: sending %.1f MiB ...\n",
              static_cast<double>(dout->data.size()) / 1048576.0);
  std::fflush(stdout);
  auto c = ConnectFromFlags(address);
  absl::StatusOr<BackwardOutputs> g = c->Backward(shapes, absl::GetFlag(FLAGS_handle), dout->data);
  if (!g.ok()) return Fail(g.status());
  PrintMetrics("backward", g->metrics);
  const int64_t B = shapes.batch, H = shapes.heads, Hkv = g->kv_heads, S = shapes.seq_len,
                D = shapes.head_dim;
  for (auto [name, t, heads] :
       {std::tuple{"dq", &g->dq, H}, {"dk", &g->dk, Hkv}, {"dv", &g->dv, Hkv}}) {
    absl::Status s = WriteFloat(name, {B, heads, S, D}, std::as_bytes(std::span(*t)), "<f4");
    if (!s.ok()) return Fail(s);
  }
  return 0;
}

int ReleaseHandle(const std::string& address) {
  const std::string handle = absl::GetFlag(FLAGS_handle);
  if (handle.empty()) return BadInvocation(absl::InvalidArgumentError("release needs --handle"));
  auto c = ConnectFromFlags(address);
  if (absl::Status s = c->Release(handle); !s.ok()) return Fail(s);
  std::printf("released %s\n", handle.c_str());
  return 0;
}

// Times forward + backward of one synthetic layer against a running cluster,
// printing progress after every call.
int Bench(const std::string& address) {
  kernels::reference::BatchShape shape{absl::GetFlag(FLAGS_batch), absl::GetFlag(FLAGS_heads),
                                       absl::GetFlag(FLAGS_kv_heads).value_or(2),
                                       absl::GetFlag(FLAGS_seq_len), absl::GetFlag(FLAGS_head_dim)};
  kernels::reference::RowLayout layout;
  layout.doc_lengths = {shape.seq_len};
  const auto batch =
      kernels::reference::MakeSyntheticBatch(shape, {layout}, kernels::DType::kF32, 1);
  kernels::LayerConfig layer;
  if (absl::GetFlag(FLAGS_sliding)) layer.kind = kernels::LayerKind::kSliding;
  layer.window = absl::GetFlag(FLAGS_window);
  const std::unique_ptr<EncodedBatch> encoded = EncodeBatch(batch, layer, false);
  ForwardInputs in = encoded->in;
  in.layer.clear_scale();  // The service's default, 1/sqrt(D).
  absl::StatusOr<attention::v1::ShardLayout> shard_layout = LayoutFromFlag();
  if (!shard_layout.ok()) return BadInvocation(shard_layout.status());
  in.layout = *shard_layout;
  auto c = ConnectFromFlags(address);
  const int iterations = std::max(1, absl::GetFlag(FLAGS_iterations));
  double best_fwd = 1e30, best_bwd = 1e30, flops_fwd = 0, flops_bwd = 0;
  std::printf("bench: B=%lld H=%lld Hkv=%lld S=%lld D=%lld %s, %d iterations\n",
              static_cast<long long>(shape.batch), static_cast<long long>(shape.heads),
              static_cast<long long>(shape.kv_heads), static_cast<long long>(shape.seq_len),
              static_cast<long long>(shape.head_dim),
              layer.kind == kernels::LayerKind::kSliding ? "sliding" : "causal full", iterations);
  Calls calls(*c);
  const auto dout = std::as_bytes(std::span(encoded->dout));
  for (int i = 0; i < iterations; ++i) {
    absl::StatusOr<ForwardOutputs> f = calls.Forward(in, dout);
    if (!f.ok()) return Fail(f.status());
    absl::StatusOr<BackwardOutputs> g = calls.Backward(in, f->session.handle(), dout);
    if (!g.ok()) return Fail(g.status());
    (void)c->Release(f->session.handle());
    best_fwd = std::min(best_fwd, f->metrics.seconds());
    best_bwd = std::min(best_bwd, g->metrics.seconds());
    flops_fwd = f->metrics.flops();
    flops_bwd = g->metrics.flops();
    std::printf("  [%d/%d] forward %.1f ms, backward %.1f ms\n", i + 1, iterations,
                1e3 * f->metrics.seconds(), 1e3 * g->metrics.seconds());
    std::fflush(stdout);
  }
  std::printf("best: forward %.1f ms (%.2f GFLOP/s), backward %.1f ms (%.2f GFLOP/s)\n",
              1e3 * best_fwd, flops_fwd / best_fwd * 1e-9, 1e3 * best_bwd,
              flops_bwd / best_bwd * 1e-9);
  return 0;
}

absl::StatusOr<std::unique_ptr<LocalCluster>> StartLocal() {
  LocalClusterOptions options;
  options.cp = absl::GetFlag(FLAGS_cp);
  options.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  options.tls_require_client_cert = absl::GetFlag(FLAGS_tls_require_client_cert);
  options.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  options.cluster_token_file = absl::GetFlag(FLAGS_cluster_token_file);
  std::printf("starting a local cluster: 1 coordinator, %d CPU workers on 127.0.0.1\n", options.cp);
  return LocalCluster::Start(options);
}

int Run(const std::string& command) {
  if (cli::FindCommand(command) == nullptr) {
    std::fprintf(stderr, "error: unknown command '%s'; commands: %s\n", command.c_str(),
                 cli::CommandNames().c_str());
    return 2;
  }
  if (command == "demo") {
    absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = StartLocal();
    if (!cluster.ok()) {
      std::fprintf(stderr, "error: %s\n", cluster.status().ToString().c_str());
      return 1;
    }
    const int rc = Synthetic((*cluster)->address());
    const absl::Status stopped = (*cluster)->Stop();
    std::printf("cluster stopped%s\n", stopped.ok() ? " cleanly" : ": not cleanly");
    return rc != 0 ? rc : (stopped.ok() ? 0 : 1);
  }
  if (command == "serve") {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    absl::StatusOr<std::unique_ptr<LocalCluster>> cluster = StartLocal();
    if (!cluster.ok()) {
      std::fprintf(stderr, "error: %s\n", cluster.status().ToString().c_str());
      return 1;
    }
    // Prometheus endpoints first: a launcher reading up to the address line
    // has them all.
    std::printf("metrics of coordinator at %s\n",
                (*cluster)->coordinator_metrics_address().c_str());
    const std::vector<std::string> workers = (*cluster)->worker_metrics_addresses();
    for (size_t r = 0; r < workers.size(); ++r) {
      std::printf("metrics of worker %zu at %s\n", r, workers[r].c_str());
    }
    std::printf("coordinator at %s; Ctrl-C stops the cluster\n", (*cluster)->address().c_str());
    std::fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    return (*cluster)->Stop().ok() ? 0 : 1;
  }
  const std::string address = absl::GetFlag(FLAGS_coordinator);
  if (address.empty()) {
    std::fprintf(stderr, "error: %s needs --coordinator=HOST:PORT\n", command.c_str());
    return 2;
  }
  if (command == "status") {
    auto c = ConnectFromFlags(address);
    absl::StatusOr<attention::v1::ClusterStatusResponse> s = c->Status();
    if (!s.ok()) {
      std::fprintf(stderr, "error: %s\n", s.status().ToString().c_str());
      return 1;
    }
    std::printf("ring of %d, %s, generation %llu, %d open sessions\n", s->cp(),
                s->ring_ready() ? "ready" : "not ready",
                static_cast<unsigned long long>(s->ring_generation()), s->open_sessions());
    for (const auto& w : s->workers()) {
      std::printf("  rank %d  %s  %s\n", w.rank(), w.address().c_str(), w.up() ? "up" : "down");
    }
    return 0;
  }
  if (command == "synthetic") return Synthetic(address);
  if (command == "forward") return ForwardFromFiles(address);
  if (command == "prepare") return PrepareFromFiles(address);
  if (command == "backward") return BackwardFromFiles(address);
  if (command == "release") return ReleaseHandle(address);
  return Bench(address);
}

// `ringattn help [COMMAND]` and `--help` anywhere: the usage of COMMAND, or of
// every command, on stdout; exit code 2 for an unknown command.
int Help(const std::vector<char*>& args, bool help_flag) {
  // args[0] is the program; `help` itself is not the command asked about.
  size_t i = 1;
  if (!help_flag || (args.size() > 1 && std::string(args[1]) == "help")) ++i;
  if (args.size() <= i) {
    std::fputs(cli::MainHelp().c_str(), stdout);
    return 0;
  }
  const cli::Command* c = cli::FindCommand(args[i]);
  if (c == nullptr) {
    std::fprintf(stderr, "error: unknown command '%s'; commands: %s\n", args[i],
                 cli::CommandNames().c_str());
    return 2;
  }
  std::fputs(cli::CommandHelp(*c).c_str(), stdout);
  return 0;
}

}  // namespace
}  // namespace ringattn::client

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("ringattn COMMAND [flags]; `ringattn help` lists the commands");
  // --help is answered here, not by absl, whose --help lists flags by source
  // file: taken out before parsing, so the rest still parses as usual.
  bool help_flag = false;
  std::vector<char*> kept;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-help" || a == "--helpshort" || a == "-helpshort" || a == "-h") {
      help_flag = true;
    } else {
      kept.push_back(argv[i]);
    }
  }
  std::vector<char*> args = absl::ParseCommandLine(static_cast<int>(kept.size()), kept.data());
  if (help_flag || (args.size() > 1 && std::string(args[1]) == "help")) {
    return ringattn::client::Help(args, help_flag);
  }
  const std::string command = args.size() > 1 ? args[1] : "demo";
  return ringattn::client::Run(command);
}
