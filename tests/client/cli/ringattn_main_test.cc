// The ringattn CLI and the daemons as a user meets them, through the
// binaries: --help lists each binary's own flags and nothing linked in,
// per-command help, unknown commands, and the CLI's checks before it sends
// (dtypes, --out_dir, kv_heads) and its handling of sessions (the handle
// printed first, released on a failed write, `release`), against a local
// cluster on 127.0.0.1.
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/attention_client.h"
#include "client/local_cluster.h"
#include "client/npy.h"
#include "gtest/gtest.h"

namespace ringattn::client {
namespace {

struct CommandRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

CommandRun RunCommand(const std::string& cmd) {
  CommandRun run;
  FILE* pipe = popen((cmd + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return run;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) run.output.append(buf, n);
  const int status = pclose(pipe);
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

std::string Bin(const std::string& name) { return std::string(RINGATTN_BIN_DIR) + "/" + name; }

// The flags absl's --helpfull attributes to source files whose path holds
// one of `dirs`: what the binary itself defines.
std::set<std::string> OwnFlags(const std::string& binary, const std::vector<std::string>& dirs) {
  const CommandRun r = RunCommand(binary + " --helpfull");
  std::set<std::string> flags;
  bool own = false;
  for (absl::string_view line : absl::StrSplit(r.output, '\n')) {
    if (absl::StartsWith(line, "  Flags from ")) {
      own = false;
      for (const std::string& d : dirs) own |= absl::StrContains(line, d);
    } else if (own && absl::StartsWith(line, "    --")) {
      line.remove_prefix(6);
      flags.insert(std::string(line.substr(0, line.find_first_of(" ("))));
    }
  }
  return flags;
}

// The flags a help text of ours lists: "  --name=default" or "  --name".
std::set<std::string> ListedFlags(const std::string& help) {
  std::set<std::string> flags;
  for (absl::string_view line : absl::StrSplit(help, '\n')) {
    if (!absl::StartsWith(line, "  --")) continue;
    line.remove_prefix(4);
    flags.insert(std::string(line.substr(0, line.find_first_of("= "))));
  }
  return flags;
}

void ExpectHelpListsOwnFlagsOnly(const std::string& binary, const std::vector<std::string>& dirs) {
  const std::set<std::string> own = OwnFlags(binary, dirs);
  ASSERT_GT(own.size(), 3u) << binary;
  for (const char* help : {" --help", " -h", " --helpshort"}) {
    const CommandRun r = RunCommand(binary + help);
    EXPECT_EQ(r.exit_code, 0) << binary << help << ": " << r.output;
    EXPECT_EQ(ListedFlags(r.output), own) << binary << help << ": " << r.output;
    for (const char* noise : {"No flags matched", "Flags from", "not defined", "--fromenv",
                              "--undefok", "--tryfromenv"}) {
      EXPECT_FALSE(absl::StrContains(r.output, noise)) << binary << help << ": " << r.output;
    }
  }
}

TEST(HelpTest, CoordinatorHelpListsItsOwnFlagsGroupedWithDefaults) {
  const std::string bin = Bin("ringattn-coordinator");
  ExpectHelpListsOwnFlagsOnly(bin, {"server/coordinator/", "server/common/"});
  const CommandRun r = RunCommand(bin + " --help");
  EXPECT_TRUE(absl::StrContains(r.output, "usage: ringattn-coordinator")) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "\nLimits:\n")) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "\nSecurity:\n")) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "  --port=50051\n      gRPC port")) << r.output;
}

TEST(HelpTest, WorkerHelpListsItsOwnFlagsGroupedWithDefaults) {
  const std::string bin = Bin("ringattn-worker");
  ExpectHelpListsOwnFlagsOnly(bin, {"server/worker/", "server/common/"});
  const CommandRun r = RunCommand(bin + " --help");
  EXPECT_TRUE(absl::StrContains(r.output, "usage: ringattn-worker")) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "\nCompute:\n")) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "  --device=auto\n      Compute backend")) << r.output;
}

TEST(HelpTest, CliHelpListsEveryCommandAndItsOwnFlags) {
  const std::string bin = Bin("ringattn");
  ExpectHelpListsOwnFlagsOnly(bin, {"client/cli/"});
  const CommandRun r = RunCommand(bin + " --help");
  for (const char* command : {"demo", "serve", "status", "synthetic", "forward", "prepare",
                              "backward", "release", "bench", "help"}) {
    EXPECT_TRUE(absl::StrContains(r.output, absl::StrCat("\n  ", command, " "))) << r.output;
  }
  EXPECT_EQ(RunCommand(bin + " help").output, r.output);
}

TEST(HelpTest, HelpOfACommandShowsItsUsageAndOnlyItsFlags) {
  const std::string bin = Bin("ringattn");
  const CommandRun r = RunCommand(bin + " help forward");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "usage: ringattn forward --coordinator=HOST:PORT"))
      << r.output;
  EXPECT_EQ(ListedFlags(r.output), (std::set<std::string>{"coordinator",
                                                          "q",
                                                          "k",
                                                          "v",
                                                          "doc_ids",
                                                          "vision_groups",
                                                          "padding_mask",
                                                          "attention_mask",
                                                          "mm_token_type_ids",
                                                          "packed_seq_ids",
                                                          "out_dir",
                                                          "keep_session",
                                                          "dtype",
                                                          "sliding",
                                                          "window",
                                                          "scale",
                                                          "shm",
                                                          "layout",
                                                          "tls",
                                                          "tls_ca_file",
                                                          "tls_cert_file",
                                                          "tls_key_file",
                                                          "tls_server_name",
                                                          "auth_token_file"}))
      << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "  --out_dir=.\n")) << r.output;
  // The same through --help after the command, anywhere on the line.
  const CommandRun flag = RunCommand(bin + " forward --help");
  EXPECT_EQ(flag.exit_code, 0);
  EXPECT_EQ(flag.output, r.output);
  EXPECT_EQ(RunCommand(bin + " --help forward").output, r.output);
  const CommandRun release = RunCommand(bin + " help release");
  EXPECT_EQ(ListedFlags(release.output).count("handle"), 1u) << release.output;
  EXPECT_EQ(ListedFlags(release.output).count("q"), 0u) << release.output;
}

TEST(HelpTest, UnknownCommandIsNamedAsSuch) {
  const std::string bin = Bin("ringattn");
  for (const std::string& cmd : {bin + " frobnicate", bin + " frobnicate --coordinator=h:1",
                                 bin + " help frobnicate", bin + " frobnicate --help"}) {
    const CommandRun r = RunCommand(cmd);
    EXPECT_EQ(r.exit_code, 2) << cmd << ": " << r.output;
    EXPECT_TRUE(
        absl::StrContains(r.output,
                          "unknown command 'frobnicate'; commands: demo, serve, status, synthetic, "
                          "forward, prepare, backward, release, bench, help"))
        << cmd << ": " << r.output;
    EXPECT_FALSE(absl::StrContains(r.output, "needs --coordinator")) << r.output;
  }
}

// --- Checks before sending and sessions, against a local cluster ------------

std::string MakeTempDir() {
  std::string dir = testing::TempDir() + "/ringattn_cli_XXXXXX";
  EXPECT_NE(mkdtemp(dir.data()), nullptr);
  return dir;
}

// A float32 tensor of `shape` in (-1, 1), as .npy.
void WriteRandom(const std::string& path, std::vector<int64_t> shape, const std::string& descr,
                 uint32_t seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> values(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  for (float& x : values) x = u(rng);
  NpyArray a{descr, std::move(shape), {}};
  const auto* bytes = reinterpret_cast<const std::byte*>(values.data());
  const size_t size = descr == "<f4" ? values.size() * 4 : values.size() * 2;  // f2: bits only
  a.data.assign(bytes, bytes + size);
  ASSERT_TRUE(WriteNpy(path, a).ok()) << path;
}

constexpr int64_t kB = 1, kH = 2, kHkv = 1, kS = 64, kD = 16;

// q, k, v (and dout) of one small layer in `dir`.
void WriteInputs(const std::string& dir, const std::string& descr = "<f4") {
  WriteRandom(dir + "/q.npy", {kB, kH, kS, kD}, descr, 1);
  WriteRandom(dir + "/k.npy", {kB, kHkv, kS, kD}, descr, 2);
  WriteRandom(dir + "/v.npy", {kB, kHkv, kS, kD}, descr, 3);
  WriteRandom(dir + "/dout.npy", {kB, kH, kS, kD}, descr, 4);
}

std::string ForwardCommand(const std::string& address, const std::string& dir,
                           const std::string& out_dir) {
  return absl::StrCat(Bin("ringattn"), " forward --coordinator=", address, " --q=", dir,
                      "/q.npy --k=", dir, "/k.npy --v=", dir, "/v.npy --out_dir=", out_dir);
}

// The handle a forward printed ("handle HANDLE"), or "".
std::string HandleOf(const std::string& output) {
  const size_t at = output.find("handle ");
  if (at == std::string::npos) return "";
  const size_t start = at + 7;
  return output.substr(start, output.find('\n', start) - start);
}

TEST(CliChecksTest, DtypeFlagDisagreeingWithTheFilesNamesBoth) {
  const std::string dir = MakeTempDir();
  WriteInputs(dir);
  // No coordinator is there: each check must fail before anything is sent.
  const CommandRun bf16 = RunCommand(ForwardCommand("127.0.0.1:1", dir, dir) + " --dtype=BF16");
  EXPECT_EQ(bf16.exit_code, 2) << bf16.output;
  EXPECT_TRUE(
      absl::StrContains(bf16.output, "--dtype=BF16 but " + dir + "/q.npy holds float32 (FP32)"))
      << bf16.output;
  EXPECT_FALSE(absl::StrContains(bf16.output, "sending")) << bf16.output;
  // Without --dtype the files' dtype is taken; uint16 needs --dtype=BF16.
  WriteRandom(dir + "/u16.npy", {kB, kH, kS, kD}, "<u2", 5);
  const CommandRun u16 =
      RunCommand(ForwardCommand("127.0.0.1:1", dir, dir) + " --q=" + dir + "/u16.npy");
  EXPECT_EQ(u16.exit_code, 2) << u16.output;
  EXPECT_TRUE(
      absl::StrContains(u16.output, "/k.npy holds float32 but " + dir + "/u16.npy holds uint16"))
      << u16.output;
  // A dO in another dtype than --dtype.
  const CommandRun dout = RunCommand(
      absl::StrCat(Bin("ringattn"), " backward --coordinator=127.0.0.1:1 --handle=h --dout=", dir,
                   "/dout.npy --dtype=FP16 --out_dir=", dir));
  EXPECT_EQ(dout.exit_code, 2) << dout.output;
  EXPECT_TRUE(
      absl::StrContains(dout.output, "--dtype=FP16 but " + dir + "/dout.npy holds float32 (FP32)"))
      << dout.output;
}

class CliClusterTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    LocalClusterOptions options;
    options.cp = 2;
    options.bin_dir = RINGATTN_BIN_DIR;
    options.ring_timeout_seconds = 30;
    absl::StatusOr<std::unique_ptr<LocalCluster>> c = LocalCluster::Start(options);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
  }
  static void TearDownTestSuite() {
    if (cluster_ != nullptr) {
      EXPECT_TRUE(cluster_->Stop().ok());
    }
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(cluster_, nullptr); }

  static int OpenSessions() {
    absl::StatusOr<attention::v1::ClusterStatusResponse> s =
        AttentionClient::Connect(cluster_->address())->Status();
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? s->open_sessions() : -1;
  }

  static LocalCluster* cluster_;
};

LocalCluster* CliClusterTest::cluster_ = nullptr;

TEST_F(CliClusterTest, OutDirThatCannotTakeTheOutputsFailsBeforeTheForward) {
  const std::string dir = MakeTempDir();
  WriteInputs(dir);
  const std::string file = dir + "/q.npy";  // A file, not a directory.
  for (const std::string& out_dir : {dir + "/missing", file}) {
    const CommandRun r = RunCommand(ForwardCommand(cluster_->address(), dir, out_dir));
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_TRUE(
        absl::StrContains(r.output, "--out_dir=" + out_dir + " is not an existing directory"))
        << r.output;
    EXPECT_FALSE(absl::StrContains(r.output, "sending")) << r.output;
    EXPECT_EQ(HandleOf(r.output), "") << r.output;
  }
  EXPECT_EQ(OpenSessions(), 0);
}

// The directory passes the check but out.npy cannot be written (a directory
// is in its place): the handle is printed, and the session released unless
// --keep_session.
TEST_F(CliClusterTest, WriteFailureAfterTheForwardReleasesTheSessionUnlessKept) {
  const std::string dir = MakeTempDir();
  WriteInputs(dir);
  const std::string out_dir = dir + "/out";
  ASSERT_EQ(mkdir(out_dir.c_str(), 0755), 0);
  ASSERT_EQ(mkdir((out_dir + "/out.npy").c_str(), 0755), 0);
  const CommandRun released = RunCommand(ForwardCommand(cluster_->address(), dir, out_dir));
  EXPECT_EQ(released.exit_code, 1) << released.output;
  const std::string handle = HandleOf(released.output);
  EXPECT_FALSE(handle.empty()) << released.output;
  EXPECT_TRUE(absl::StrContains(released.output, "session " + handle + " released"))
      << released.output;
  EXPECT_EQ(OpenSessions(), 0);

  const CommandRun kept =
      RunCommand(ForwardCommand(cluster_->address(), dir, out_dir) + " --keep_session");
  EXPECT_EQ(kept.exit_code, 1) << kept.output;
  const std::string kept_handle = HandleOf(kept.output);
  EXPECT_TRUE(absl::StrContains(kept.output, "session " + kept_handle + " kept open"))
      << kept.output;
  EXPECT_EQ(OpenSessions(), 1);
  EXPECT_EQ(RunCommand(absl::StrCat(Bin("ringattn"), " release --coordinator=", cluster_->address(),
                                    " --handle=", kept_handle))
                .exit_code,
            0);
  EXPECT_EQ(OpenSessions(), 0);
}

TEST_F(CliClusterTest, WrongKvHeadsFailsBeforeTheBackwardAndTheSessionIsTheDefault) {
  const std::string dir = MakeTempDir();
  WriteInputs(dir);
  const CommandRun f = RunCommand(ForwardCommand(cluster_->address(), dir, dir));
  ASSERT_EQ(f.exit_code, 0) << f.output;
  const std::string handle = HandleOf(f.output);
  ASSERT_FALSE(handle.empty()) << f.output;
  const std::string backward =
      absl::StrCat(Bin("ringattn"), " backward --coordinator=", cluster_->address(),
                   " --handle=", handle, " --dout=", dir, "/dout.npy --out_dir=", dir);
  const CommandRun wrong = RunCommand(backward + " --kv_heads=2");
  EXPECT_EQ(wrong.exit_code, 1) << wrong.output;
  EXPECT_TRUE(
      absl::StrContains(wrong.output, "INVALID_ARGUMENT: kv_heads 2 does not match session " +
                                          handle + ", whose forward had kv_heads 1"))
      << wrong.output;
  EXPECT_FALSE(absl::StrContains(wrong.output, "backward ")) << wrong.output;  // No metrics.
  // Without --kv_heads the session's is taken; the session is still usable.
  const CommandRun right = RunCommand(backward);
  ASSERT_EQ(right.exit_code, 0) << right.output;
  for (const char* name : {"dk", "dv"}) {
    absl::StatusOr<NpyArray> a = ReadNpy(absl::StrCat(dir, "/", name, ".npy"));
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->shape, (std::vector<int64_t>{kB, kHkv, kS, kD}));
  }
  EXPECT_EQ(RunCommand(backward + " --kv_heads=1").exit_code, 0);
  EXPECT_TRUE(AttentionClient::Connect(cluster_->address())->Release(handle).ok());
}

// --shm: the demo's batch with every tensor in a shared-memory region of
// the CLI's process, checked against the oracle like the streamed one; the
// regions are unregistered when it ends.
TEST_F(CliClusterTest, SyntheticThroughSharedMemoryPassesAndLeavesNoRegion) {
  const CommandRun r =
      RunCommand(Bin("ringattn") + " synthetic --coordinator=" + cluster_->address() +
                 " --seq_len=96 --shm 2>&1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "tensors in shared memory")) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "PASS")) << r.output;
  absl::StatusOr<attention::v1::ListRegionsResponse> regions =
      AttentionClient::Connect(cluster_->address())->ListRegions();
  ASSERT_TRUE(regions.ok()) << regions.status();
  EXPECT_EQ(regions->regions_size(), 0);
  EXPECT_EQ(OpenSessions(), 0);
}

TEST_F(CliClusterTest, ReleaseFreesTheSessionAndASecondReleaseIsNotFound) {
  const std::string dir = MakeTempDir();
  WriteInputs(dir);
  const CommandRun f = RunCommand(ForwardCommand(cluster_->address(), dir, dir));
  ASSERT_EQ(f.exit_code, 0) << f.output;
  const std::string handle = HandleOf(f.output);
  EXPECT_EQ(OpenSessions(), 1);
  const std::string release = absl::StrCat(
      Bin("ringattn"), " release --coordinator=", cluster_->address(), " --handle=", handle);
  const CommandRun first = RunCommand(release);
  EXPECT_EQ(first.exit_code, 0) << first.output;
  EXPECT_TRUE(absl::StrContains(first.output, "released " + handle)) << first.output;
  EXPECT_EQ(OpenSessions(), 0);
  const CommandRun second = RunCommand(release);
  EXPECT_EQ(second.exit_code, 1) << second.output;
  EXPECT_TRUE(absl::StrContains(second.output, "NOT_FOUND")) << second.output;
  const CommandRun missing =
      RunCommand(absl::StrCat(Bin("ringattn"), " release --coordinator=", cluster_->address()));
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_TRUE(absl::StrContains(missing.output, "release needs --handle")) << missing.output;
}

// An .npy of int64 values.
void WriteInts(const std::string& path, std::vector<int64_t> shape,
               const std::vector<int64_t>& values) {
  NpyArray a{"<i8", std::move(shape), {}};
  const auto* bytes = reinterpret_cast<const std::byte*>(values.data());
  a.data.assign(bytes, bytes + values.size() * 8);
  ASSERT_TRUE(WriteNpy(path, a).ok()) << path;
}

template <typename T>
std::vector<T> ValuesOf(const NpyArray& a) {
  std::vector<T> v(a.data.size() / sizeof(T));
  std::memcpy(v.data(), a.data.data(), a.data.size());
  return v;
}

// prepare writes the padded tensors and, with --shards, each rank's slice;
// --prepare_cp overrides the ring's 2.
TEST_F(CliClusterTest, PrepareWritesThePaddedBatchAndShards) {
  const std::string dir = MakeTempDir();
  WriteInts(dir + "/ids.npy", {1, 5}, {11, 12, 13, 14, 15});
  WriteInts(dir + "/labels.npy", {1, 5}, {1, 2, 3, 4, 5});
  WriteInts(dir + "/mask.npy", {1, 5}, {1, 1, 1, 1, 0});
  WriteInts(dir + "/types.npy", {1, 5}, {0, 1, 1, 0, 0});
  const std::string out = dir + "/out";  // Apart: the outputs reuse the inputs' names.
  ASSERT_EQ(mkdir(out.c_str(), 0755), 0);
  const std::string prepare = absl::StrCat(
      Bin("ringattn"), " prepare --coordinator=", cluster_->address(), " --input_ids=", dir,
      "/ids.npy --labels=", dir, "/labels.npy --attention_mask=", dir,
      "/mask.npy --mm_token_type_ids=", dir, "/types.npy --pad_token_id=9", " --out_dir=", out);
  const CommandRun r = RunCommand(prepare + " --shards");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "prepared B=1 S=5 -> P=8 for cp=2 (shard length 4)"))
      << r.output;
  absl::StatusOr<NpyArray> ids = ReadNpy(out + "/input_ids.npy");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->shape, (std::vector<int64_t>{1, 8}));
  EXPECT_EQ(ValuesOf<int64_t>(*ids), (std::vector<int64_t>{11, 12, 13, 14, 15, 9, 9, 9}));
  absl::StatusOr<NpyArray> padding = ReadNpy(out + "/padding_mask.npy");
  ASSERT_TRUE(padding.ok()) << padding.status();
  EXPECT_EQ(padding->descr, "|b1");
  EXPECT_EQ(ValuesOf<uint8_t>(*padding), (std::vector<uint8_t>{0, 0, 0, 0, 1, 1, 1, 1}));
  absl::StatusOr<NpyArray> labels = ReadNpy(out + "/rank1_labels.npy");
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_EQ(ValuesOf<int64_t>(*labels), (std::vector<int64_t>{5, -100, -100, -100}));
  absl::StatusOr<NpyArray> vision = ReadNpy(out + "/rank0_vision_groups.npy");
  ASSERT_TRUE(vision.ok()) << vision.status();
  EXPECT_EQ(ValuesOf<int32_t>(*vision), (std::vector<int32_t>{-1, 0, 0, -1}));
  absl::StatusOr<NpyArray> positions = ReadNpy(out + "/position_ids.npy");
  ASSERT_TRUE(positions.ok()) << positions.status();
  EXPECT_EQ(ValuesOf<int64_t>(*positions), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));

  const CommandRun cp3 = RunCommand(prepare + " --prepare_cp=3");
  ASSERT_EQ(cp3.exit_code, 0) << cp3.output;
  EXPECT_TRUE(absl::StrContains(cp3.output, "-> P=6 for cp=3")) << cp3.output;
  // The server's checks come back naming the field.
  WriteInts(dir + "/short.npy", {1, 4}, {1, 2, 3, 4});
  const CommandRun bad = RunCommand(prepare + " --labels=" + dir + "/short.npy");
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_TRUE(absl::StrContains(bad.output, "INVALID_ARGUMENT: labels has shape [1,4]"))
      << bad.output;
  // And the CLI's own before anything is sent.
  const CommandRun none =
      RunCommand(absl::StrCat(Bin("ringattn"), " prepare --coordinator=", cluster_->address(),
                              " --labels=", dir, "/labels.npy"));
  EXPECT_EQ(none.exit_code, 2) << none.output;
  EXPECT_TRUE(absl::StrContains(none.output, "prepare needs one of --input_ids or --inputs_embeds"))
      << none.output;
}

// forward with Hugging Face metadata files gives what the explicit files do.
TEST_F(CliClusterTest, ForwardWithHfMetadataMatchesExplicitMetadata) {
  const std::string dir = MakeTempDir();
  WriteInputs(dir);
  std::vector<int64_t> mask(kS, 1), types(kS, 0), packed(kS, 1);
  std::vector<int32_t> docs(kS, 1), groups(kS, -1);
  std::vector<uint8_t> padding(kS, 0);
  for (int64_t i = 0; i < kS; ++i) {
    if (i >= 40) packed[i] = docs[i] = 2;  // A second document,
    if (i >= 60) {                         // then padding,
      mask[i] = packed[i] = docs[i] = 0;
      padding[i] = 1;
    }
    if (i >= 10 && i < 20) {  // and an image in the first.
      types[i] = 1;
      groups[i] = 0;
    }
  }
  WriteInts(dir + "/mask.npy", {kB, kS}, mask);
  WriteInts(dir + "/types.npy", {kB, kS}, types);
  WriteInts(dir + "/packed.npy", {kB, kS}, packed);
  auto write = [&](const std::string& name, const std::string& descr, const void* p, size_t n) {
    NpyArray a{descr, {kB, kS}, {}};
    a.data.assign(static_cast<const std::byte*>(p), static_cast<const std::byte*>(p) + n);
    ASSERT_TRUE(WriteNpy(dir + "/" + name, a).ok());
  };
  write("docs.npy", "<i4", docs.data(), docs.size() * 4);
  write("groups.npy", "<i4", groups.data(), groups.size() * 4);
  write("padding.npy", "|u1", padding.data(), padding.size());
  const std::string hf_out = dir + "/hf", explicit_out = dir + "/explicit";
  ASSERT_EQ(mkdir(hf_out.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(explicit_out.c_str(), 0755), 0);
  const CommandRun hf = RunCommand(ForwardCommand(cluster_->address(), dir, hf_out) +
                                   " --sliding --window=16 --attention_mask=" + dir +
                                   "/mask.npy --mm_token_type_ids=" + dir +
                                   "/types.npy --packed_seq_ids=" + dir + "/packed.npy");
  ASSERT_EQ(hf.exit_code, 0) << hf.output;
  const CommandRun ex =
      RunCommand(ForwardCommand(cluster_->address(), dir, explicit_out) +
                 " --sliding --window=16 --doc_ids=" + dir + "/docs.npy --vision_groups=" + dir +
                 "/groups.npy --padding_mask=" + dir + "/padding.npy");
  ASSERT_EQ(ex.exit_code, 0) << ex.output;
  for (const char* name : {"/out.npy", "/lse.npy"}) {
    absl::StatusOr<NpyArray> a = ReadNpy(hf_out + name);
    absl::StatusOr<NpyArray> b = ReadNpy(explicit_out + name);
    ASSERT_TRUE(a.ok() && b.ok()) << name;
    EXPECT_EQ(a->data, b->data) << name;
  }
  for (const CommandRun* run : {&hf, &ex}) {
    EXPECT_TRUE(AttentionClient::Connect(cluster_->address())->Release(HandleOf(run->output)).ok());
  }
  // A float64 file is not a wire dtype: named before sending.
  NpyArray f8{"<f8", {kB, kS}, std::vector<std::byte>(kS * 8)};
  ASSERT_TRUE(WriteNpy(dir + "/f8.npy", f8).ok());
  const CommandRun bad = RunCommand(ForwardCommand(cluster_->address(), dir, dir) +
                                    " --attention_mask=" + dir + "/f8.npy");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_TRUE(absl::StrContains(bad.output, "--attention_mask holds <f8")) << bad.output;
  EXPECT_EQ(OpenSessions(), 0);
}

}  // namespace
}  // namespace ringattn::client
