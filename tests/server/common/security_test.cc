// The daemons' TLS, mutual TLS and token flags with real processes on
// 127.0.0.1 ephemeral ports: certificates are made at run time.
#include "proto/wire/security.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/attention_client.h"
#include "client/local_cluster.h"
#include "client/synthetic_inputs.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "proto/wire/cluster_secret.h"
#include "tests/proto/wire/testing/test_pki.h"
#include "worker/v1/worker_service.grpc.pb.h"

extern char** environ;

namespace ringattn::server {
namespace {

using ::testing::HasSubstr;
using wire::ChannelSecurity;

constexpr char kTrainerToken[] = "trainer-token-0123456789abcdef";
constexpr char kClusterToken[] = "cluster-token-0123456789abcdef";

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ringattn_security_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    absl::StatusOr<wire::testing::TestPki> pki = wire::testing::MakeTestPki(dir_);
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
    tokens_ = dir_ + "/tokens";
    ASSERT_TRUE(
        wire::testing::WriteSecretFile(tokens_, absl::StrCat("trainer:", kTrainerToken, "\n"))
            .ok());
    cluster_token_ = dir_ + "/cluster_token";
    ASSERT_TRUE(
        wire::testing::WriteSecretFile(cluster_token_, absl::StrCat(kClusterToken, "\n")).ok());
  }

  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  client::LocalClusterOptions Options() const {
    client::LocalClusterOptions o;
    o.cp = 2;
    o.bin_dir = RINGATTN_BIN_DIR;
    o.ring_timeout_seconds = 30;
    return o;
  }

  // TLS on every daemon, verified with the test CA.
  client::LocalClusterOptions Tls(bool require_client_cert) const {
    client::LocalClusterOptions o = Options();
    o.tls_cert_file = pki_.node_cert;
    o.tls_key_file = pki_.node_key;
    o.tls_ca_file = pki_.ca_cert;
    o.tls_require_client_cert = require_client_cert;
    return o;
  }

  // TLS without client certificates; tokens keep strangers out.
  client::LocalClusterOptions TlsWithTokens() const {
    client::LocalClusterOptions o = Tls(false);
    o.auth_token_file = tokens_;
    o.cluster_token_file = cluster_token_;
    return o;
  }

  std::unique_ptr<client::LocalCluster> Start(const client::LocalClusterOptions& options) {
    auto cluster = client::LocalCluster::Start(options);
    EXPECT_TRUE(cluster.ok()) << cluster.status();
    return cluster.ok() ? *std::move(cluster) : nullptr;
  }

  ChannelSecurity Trusting(const std::string& token = "") const {
    ChannelSecurity s;
    s.ca_file = pki_.ca_cert;
    s.token = token;
    return s;
  }

  std::shared_ptr<grpc::Channel> Channel(const std::string& address,
                                         const ChannelSecurity& security) {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> c = wire::CreateChannel(address, security);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }

  std::unique_ptr<client::AttentionClient> Client(const std::string& address,
                                                  const ChannelSecurity& security) {
    absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
        client::AttentionClient::Connect(address, security);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  std::string dir_;
  wire::testing::TestPki pki_;
  std::string tokens_, cluster_token_;
};

// A small forward through the service: O and LSE as bytes.
absl::StatusOr<std::pair<std::vector<std::byte>, std::vector<float>>> SmallForward(
    client::AttentionClient& c) {
  const kernels::reference::SyntheticBatch b = kernels::reference::MakeSyntheticBatch(
      {1, 2, 1, 64, 32}, {kernels::reference::GemmaLikeLayout(64)}, kernels::DType::kF32, 7);
  kernels::LayerConfig layer;
  layer.scale = 0.125f;
  auto e = client::EncodeBatch(b, layer);
  absl::StatusOr<client::ForwardOutputs> f = c.Forward(e->in, absl::Seconds(60));
  if (!f.ok()) return f.status();
  if (absl::Status s = c.Release(f->session.handle()); !s.ok()) return s;
  return std::make_pair(f->out, f->lse);
}

grpc::StatusCode HealthCheck(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status s = stub->Check(&ctx, req, &resp);
  if (s.ok() && resp.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return grpc::StatusCode::UNKNOWN;
  }
  return s.error_code();
}

grpc::Status WorkerRelease(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = worker::v1::WorkerService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  worker::v1::WorkerReleaseRequest req;
  req.set_session("no-such-session");
  worker::v1::WorkerReleaseResponse resp;
  return stub->Release(&ctx, req, &resp);
}

grpc::Status StoreGet(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = worker::v1::CoordinatorControl::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  worker::v1::StoreGetRequest req;
  req.set_key("no-such-key");
  worker::v1::StoreGetResponse resp;
  return stub->StoreGet(&ctx, req, &resp);
}

// The worker API's streaming calls, opened and closed with nothing sent.
grpc::Status WorkerStream(const std::shared_ptr<grpc::Channel>& channel, bool forward) {
  auto stub = worker::v1::WorkerService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = forward ? stub->Forward(&ctx) : stub->Backward(&ctx);
  stream->WritesDone();
  worker::v1::ShardResponse resp;
  while (stream->Read(&resp)) {
  }
  return stream->Finish();
}

grpc::Status JoinRing(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = worker::v1::WorkerService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  worker::v1::JoinRingRequest req;
  req.set_store_address("127.0.0.1:1");
  req.set_cp(2);
  worker::v1::JoinRingResponse resp;
  return stub->JoinRing(&ctx, req, &resp);
}

grpc::Status StoreSet(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = worker::v1::CoordinatorControl::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  worker::v1::StoreSetRequest req;
  req.set_key("planted");
  req.set_value("by a stranger");
  worker::v1::StoreSetResponse resp;
  return stub->StoreSet(&ctx, req, &resp);
}

int PortOf(const std::string& address) { return std::stoi(address.substr(address.rfind(':') + 1)); }

grpc::Status Register(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = worker::v1::CoordinatorControl::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  worker::v1::RegisterRequest req;
  req.set_address("127.0.0.1:1");
  req.set_rank(0);
  req.set_incarnation("intruder");
  worker::v1::RegisterResponse resp;
  return stub->Register(&ctx, req, &resp);
}

// Runs `args` to completion (bounded), stderr to `log`; its exit code, or -1.
int RunToExit(const std::vector<std::string>& args, const std::string& log,
              absl::Duration timeout) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int err = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) return -1;
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (absl::Now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST_F(SecurityTest, TlsClusterGivesThePlaintextClustersResults) {
  auto plain = Start(Options());
  ASSERT_NE(plain, nullptr);
  auto tls = Start(Tls(/*require_client_cert=*/false));
  ASSERT_NE(tls, nullptr);

  auto plain_client = client::AttentionClient::Connect(plain->address());
  auto want = SmallForward(*plain_client);
  ASSERT_TRUE(want.ok()) << want.status();
  auto tls_client = Client(tls->address(), Trusting());
  ASSERT_NE(tls_client, nullptr);
  auto got = SmallForward(*tls_client);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->first, want->first);
  EXPECT_EQ(got->second, want->second);

  // Plaintext against TLS and TLS against plaintext: no call gets through.
  auto plaintext_to_tls = client::AttentionClient::Connect(tls->address());
  EXPECT_EQ(plaintext_to_tls->Status().status().code(), absl::StatusCode::kUnavailable);
  auto tls_to_plaintext = Client(plain->address(), Trusting());
  EXPECT_EQ(tls_to_plaintext->Status().status().code(), absl::StatusCode::kUnavailable);
  // A client that does not trust the cluster's CA.
  ChannelSecurity other;
  other.ca_file = pki_.other_ca_cert;
  EXPECT_EQ(Client(tls->address(), other)->Status().status().code(),
            absl::StatusCode::kUnavailable);

  plain_client.reset();
  tls_client.reset();
  EXPECT_TRUE(plain->Stop().ok());
  EXPECT_TRUE(tls->Stop().ok());
}

TEST_F(SecurityTest, MutualTlsRefusesClientsWithoutACertificateOfTheCa) {
  auto cluster = Start(Tls(/*require_client_cert=*/true));
  ASSERT_NE(cluster, nullptr);
  ChannelSecurity trainer = Trusting();
  trainer.cert_file = pki_.client_cert;
  trainer.key_file = pki_.client_key;
  auto good = Client(cluster->address(), trainer);
  auto got = SmallForward(*good);
  EXPECT_TRUE(got.ok()) << got.status();

  auto no_cert = Client(cluster->address(), Trusting());
  EXPECT_EQ(no_cert->Status().status().code(), absl::StatusCode::kUnavailable);
  ChannelSecurity rogue = Trusting();
  rogue.cert_file = pki_.rogue_cert;
  rogue.key_file = pki_.rogue_key;
  EXPECT_EQ(Client(cluster->address(), rogue)->Status().status().code(),
            absl::StatusCode::kUnavailable);
  // The worker API too: only certificates of the CA get a connection.
  absl::StatusOr<attention::v1::ClusterStatusResponse> status = good->Status();
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_EQ(status->workers_size(), 2);
  EXPECT_EQ(WorkerRelease(Channel(status->workers(0).address(), rogue)).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  good.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

TEST_F(SecurityTest, ThePublicApiNeedsAClientToken) {
  auto cluster = Start(TlsWithTokens());
  ASSERT_NE(cluster, nullptr);
  auto none = Client(cluster->address(), Trusting());
  absl::Status s = none->Status().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("needs a client token"));
  EXPECT_EQ(SmallForward(*none).status().code(), absl::StatusCode::kUnauthenticated);
  auto wrong = Client(cluster->address(), Trusting("wrong-token-0123456789abcdef"));
  EXPECT_EQ(wrong->Status().status().code(), absl::StatusCode::kUnauthenticated);
  auto cluster_token = Client(cluster->address(), Trusting(kClusterToken));
  EXPECT_EQ(cluster_token->Status().status().code(), absl::StatusCode::kPermissionDenied);

  auto trainer = Client(cluster->address(), Trusting(kTrainerToken));
  auto got = SmallForward(*trainer);
  EXPECT_TRUE(got.ok()) << got.status();
  // Probes need no token.
  EXPECT_EQ(HealthCheck(Channel(cluster->address(), Trusting())), grpc::StatusCode::OK);
  none.reset();
  wrong.reset();
  cluster_token.reset();
  trainer.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

TEST_F(SecurityTest, WorkerApiAndControlNeedTheClusterToken) {
  auto cluster = Start(TlsWithTokens());
  ASSERT_NE(cluster, nullptr);
  auto trainer = Client(cluster->address(), Trusting(kTrainerToken));
  absl::StatusOr<attention::v1::ClusterStatusResponse> before = trainer->Status();
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_TRUE(before->ring_ready());
  ASSERT_EQ(before->workers_size(), 2);
  const std::string worker = before->workers(0).address();

  grpc::Status w = WorkerRelease(Channel(worker, Trusting()));
  EXPECT_EQ(w.error_code(), grpc::StatusCode::UNAUTHENTICATED) << w.error_message();
  EXPECT_THAT(w.error_message(), HasSubstr("needs the cluster token"));
  // The worker knows no client token: a trainer's is just a wrong token.
  EXPECT_EQ(WorkerRelease(Channel(worker, Trusting(kTrainerToken))).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(WorkerRelease(Channel(worker, Trusting(kClusterToken))).ok());
  EXPECT_EQ(HealthCheck(Channel(worker, Trusting())), grpc::StatusCode::OK);

  // The coordinator's control API on the public port.
  EXPECT_EQ(StoreGet(Channel(cluster->address(), Trusting())).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::Status c = StoreGet(Channel(cluster->address(), Trusting(kTrainerToken)));
  EXPECT_EQ(c.error_code(), grpc::StatusCode::PERMISSION_DENIED) << c.error_message();
  EXPECT_EQ(Register(Channel(cluster->address(), Trusting(kTrainerToken))).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(StoreGet(Channel(cluster->address(), Trusting(kClusterToken))).error_code(),
            grpc::StatusCode::NOT_FOUND);  // Past the check: the key is not set.

  // The refused registration took no rank: the ring is the one before.
  absl::StatusOr<attention::v1::ClusterStatusResponse> after = trainer->Status();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->ring_ready());
  EXPECT_EQ(after->ring_generation(), before->ring_generation());
  EXPECT_EQ(after->workers(0).address(), worker);
  trainer.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

TEST_F(SecurityTest, WorkersWithoutTheClusterTokenCannotRegister) {
  auto cluster = Start(TlsWithTokens());
  ASSERT_NE(cluster, nullptr);
  auto trainer = Client(cluster->address(), Trusting(kTrainerToken));
  absl::StatusOr<attention::v1::ClusterStatusResponse> before = trainer->Status();
  ASSERT_TRUE(before.ok()) << before.status();
  const std::string wrong_token = dir_ + "/wrong_token";
  ASSERT_TRUE(
      wire::testing::WriteSecretFile(wrong_token, "not-the-cluster-token-0123456789\n").ok());
  for (const std::string& token_flag :
       {std::string(), absl::StrCat("--cluster_token_file=", wrong_token)}) {
    std::vector<std::string> args = {std::string(RINGATTN_BIN_DIR) + "/ringattn-worker",
                                     "--coordinator=" + cluster->address(),
                                     "--port=0",
                                     "--metrics_port=-1",
                                     "--register_timeout_seconds=1",
                                     "--tls_cert_file=" + pki_.node_cert,
                                     "--tls_key_file=" + pki_.node_key,
                                     "--tls_ca_file=" + pki_.ca_cert,
                                     "--tls_require_client_cert=false"};
    if (!token_flag.empty()) args.push_back(token_flag);
    const std::string log = dir_ + "/intruder.log";
    EXPECT_EQ(RunToExit(args, log, absl::Seconds(30)), 1) << token_flag;
    EXPECT_THAT(ReadAll(log), HasSubstr("the worker API needs the cluster token")) << token_flag;
  }
  absl::StatusOr<attention::v1::ClusterStatusResponse> after = trainer->Status();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->ring_ready());
  EXPECT_EQ(after->ring_generation(), before->ring_generation());
  trainer.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

TEST_F(SecurityTest, DaemonsRefuseTokensWithoutTlsAndBadFiles) {
  const std::string bin = RINGATTN_BIN_DIR;
  const std::string log = dir_ + "/daemon.log";
  EXPECT_EQ(RunToExit({bin + "/ringattn-coordinator", "--port=0", "--metrics_port=-1",
                       "--auth_token_file=" + tokens_},
                      log, absl::Seconds(30)),
            2);
  EXPECT_THAT(ReadAll(log), HasSubstr("auth_token_file needs TLS"));
  EXPECT_EQ(RunToExit({bin + "/ringattn-coordinator", "--port=0", "--metrics_port=-1",
                       "--tls_cert_file=" + pki_.node_cert, "--tls_key_file=" + pki_.client_key},
                      log, absl::Seconds(30)),
            2);
  EXPECT_THAT(ReadAll(log), HasSubstr("is not the key of tls_cert_file"));
}

// Without any flag, the internal APIs still need the secret the coordinator
// generated: a stranger on the host can neither drive a worker nor join or
// read the ring's store, while the daemons themselves run as before.
TEST_F(SecurityTest, OpenModeInternalApisNeedTheGeneratedSecret) {
  auto cluster = Start(Options());
  ASSERT_NE(cluster, nullptr);
  auto trainer = Client(cluster->address(), ChannelSecurity{});
  absl::StatusOr<attention::v1::ClusterStatusResponse> before = trainer->Status();
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_TRUE(before->ring_ready());
  const std::string worker = before->workers(0).address();

  const ChannelSecurity none;
  for (const grpc::Status& s :
       {WorkerRelease(Channel(worker, none)), JoinRing(Channel(worker, none)),
        WorkerStream(Channel(worker, none), true), WorkerStream(Channel(worker, none), false),
        StoreGet(Channel(cluster->address(), none)), StoreSet(Channel(cluster->address(), none)),
        Register(Channel(cluster->address(), none))}) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("cluster secret"));
  }
  ChannelSecurity wrong;
  wrong.cluster_secret = "0123456789abcdef0123456789abcdef";
  EXPECT_EQ(WorkerRelease(Channel(worker, wrong)).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(StoreGet(Channel(cluster->address(), wrong)).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  // The secret is in a file of this user's alone, 128 bits as hex.
  const int port = PortOf(cluster->address());
  struct stat st {};
  ASSERT_EQ(stat(wire::LocalClusterSecretPath(port).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  absl::StatusOr<std::string> secret = wire::ReadLocalClusterSecret(port);
  ASSERT_TRUE(secret.ok()) << secret.status();
  EXPECT_EQ(secret->size(), 32u);
  ChannelSecurity member;
  member.cluster_secret = *secret;
  EXPECT_TRUE(WorkerRelease(Channel(worker, member)).ok());
  EXPECT_EQ(StoreGet(Channel(cluster->address(), member)).error_code(),
            grpc::StatusCode::NOT_FOUND);  // Past the check: the key is not set.

  // Nothing the stranger tried changed the ring, and it still computes.
  absl::StatusOr<attention::v1::ClusterStatusResponse> after = trainer->Status();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->ring_ready());
  EXPECT_EQ(after->ring_generation(), before->ring_generation());
  EXPECT_TRUE(SmallForward(*trainer).ok());
  trainer.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

// A cluster token without TLS is the cluster secret, not a bearer token.
TEST_F(SecurityTest, PlaintextClusterTokenIsTheSecret) {
  client::LocalClusterOptions o = Options();
  o.cluster_token_file = cluster_token_;
  auto cluster = Start(o);
  ASSERT_NE(cluster, nullptr);
  auto trainer = Client(cluster->address(), ChannelSecurity{});
  absl::StatusOr<attention::v1::ClusterStatusResponse> status = trainer->Status();
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_TRUE(status->ring_ready());
  EXPECT_TRUE(SmallForward(*trainer).ok());
  const std::string worker = status->workers(0).address();
  EXPECT_EQ(WorkerRelease(Channel(worker, ChannelSecurity{})).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ChannelSecurity member;
  member.cluster_secret = kClusterToken;
  EXPECT_TRUE(WorkerRelease(Channel(worker, member)).ok());
  trainer.reset();
  EXPECT_TRUE(cluster->Stop().ok());
}

}  // namespace
}  // namespace ringattn::server
