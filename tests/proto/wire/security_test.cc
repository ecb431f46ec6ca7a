// Credentials in one process: file loading and its errors, and the token
// check of security.h's table against in-process servers on 127.0.0.1.
#include "proto/wire/security.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>

#include "attention/v1/attention_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "tests/proto/wire/testing/test_pki.h"
#include "worker/v1/worker_service.grpc.pb.h"

namespace ringattn::wire {
namespace {

using ::testing::HasSubstr;
using testing::TestPki;  // ringattn::wire::testing

constexpr char kAliceToken[] = "alice-token-0123456789";
constexpr char kAnonymousToken[] = "anonymous-token-0123456789";
constexpr char kClusterToken[] = "cluster-token-0123456789";

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ringattn_security_XXXXXX";
    path_ = mkdtemp(tmpl) ? tmpl : "";
  }
  ~TempDir() {
    if (!path_.empty()) std::filesystem::remove_all(path_);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Answers ClusterStatus and Release with the caller's identity as trailing
// metadata; everything else is UNIMPLEMENTED.
class ProbeAttention final : public attention::v1::AttentionService::Service {
 public:
  grpc::Status ClusterStatus(grpc::ServerContext* context,
                             const attention::v1::ClusterStatusRequest* /*request*/,
                             attention::v1::ClusterStatusResponse* /*response*/) override {
    context->AddTrailingMetadata("identity", ClientIdentity(*context));
    context->AddTrailingMetadata("proven", ProvenClientIdentity(*context).value_or("no"));
    return grpc::Status::OK;
  }
};

class ProbeWorker final : public worker::v1::WorkerService::Service {
 public:
  grpc::Status Release(grpc::ServerContext* context,
                       const worker::v1::WorkerReleaseRequest* /*request*/,
                       worker::v1::WorkerReleaseResponse* /*response*/) override {
    context->AddTrailingMetadata("identity", ClientIdentity(*context));
    return grpc::Status::OK;
  }
};

struct Reply {
  grpc::Status status;
  std::string identity;
  std::string proven;  // "no" when unproven; empty from services that do not say.
};

std::string Trailer(const grpc::ClientContext& ctx, const std::string& key) {
  const auto& md = ctx.GetServerTrailingMetadata();
  const auto it = md.find(key);
  return it == md.end() ? "" : std::string(it->second.data(), it->second.size());
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    absl::StatusOr<TestPki> pki = testing::MakeTestPki(dir_.path());
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *std::move(pki);
    tokens_ = dir_.path() + "/tokens";
    ASSERT_TRUE(
        testing::WriteSecretFile(tokens_, absl::StrCat("# training jobs\nalice:", kAliceToken,
                                                       "\n\n", kAnonymousToken, "\n"))
            .ok());
    cluster_ = dir_.path() + "/cluster";
    ASSERT_TRUE(testing::WriteSecretFile(cluster_, absl::StrCat(kClusterToken, "\n")).ok());
  }

  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }

  // A server with both probe services and health checking.
  void Serve(const SecurityOptions& options) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = ServerCredentials(options);
    ASSERT_TRUE(creds.ok()) << creds.status();
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", *creds, &port_);
    builder.RegisterService(&attention_);
    builder.RegisterService(&worker_);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr);
    ASSERT_NE(port_, 0);
  }

  // TLS (clients without certificates welcome) with both kinds of token.
  void ServeTlsWithTokens() {
    SecurityOptions o;
    o.tls_cert_file = pki_.node_cert;
    o.tls_key_file = pki_.node_key;
    o.tls_ca_file = pki_.ca_cert;
    o.tls_require_client_cert = false;
    o.auth_token_file = tokens_;
    o.cluster_token_file = cluster_;
    Serve(o);
  }

  std::shared_ptr<grpc::Channel> Channel(const ChannelSecurity& security) {
    absl::StatusOr<std::shared_ptr<grpc::Channel>> c =
        CreateChannel(absl::StrCat("127.0.0.1:", port_), security);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }

  ChannelSecurity Tls(const std::string& token = "") const {
    ChannelSecurity s;
    s.ca_file = pki_.ca_cert;
    s.token = token;
    return s;
  }

  Reply Status(const std::shared_ptr<grpc::Channel>& channel,
               const std::string& raw_authorization = "") {
    auto stub = attention::v1::AttentionService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!raw_authorization.empty()) ctx.AddMetadata("authorization", raw_authorization);
    attention::v1::ClusterStatusRequest req;
    attention::v1::ClusterStatusResponse resp;
    Reply r;
    r.status = stub->ClusterStatus(&ctx, req, &resp);
    r.identity = Trailer(ctx, "identity");
    r.proven = Trailer(ctx, "proven");
    return r;
  }

  Reply WorkerRelease(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = worker::v1::WorkerService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    worker::v1::WorkerReleaseRequest req;
    worker::v1::WorkerReleaseResponse resp;
    Reply r;
    r.status = stub->Release(&ctx, req, &resp);
    r.identity = Trailer(ctx, "identity");
    return r;
  }

  grpc::Status Health(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status s = stub->Check(&ctx, req, &resp);
    if (s.ok()) {
      EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
    }
    return s;
  }

  // A method of no service here (reflection, say): the "anything else" row.
  grpc::Status Unknown(const std::shared_ptr<grpc::Channel>& channel) {
    grpc::GenericStub stub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Slice empty(std::string(""));
    grpc::ByteBuffer req(&empty, 1), resp;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&ctx, "/other.v1.Other/Call", grpc::StubOptions(), &req, &resp,
                   [&](grpc::Status s) { done.set_value(std::move(s)); });
    return done.get_future().get();
  }

  TempDir dir_;
  TestPki pki_;
  std::string tokens_, cluster_;
  ProbeAttention attention_;
  ProbeWorker worker_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(SecurityTest, TokenFileNamesTokensAndSkipsComments) {
  absl::StatusOr<std::vector<NamedToken>> t = ReadTokenFile(tokens_);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 2u);
  EXPECT_EQ((*t)[0].name, "alice");
  EXPECT_EQ((*t)[0].token, kAliceToken);
  EXPECT_EQ((*t)[1].name, "client-4");
  EXPECT_EQ((*t)[1].token, kAnonymousToken);
  absl::StatusOr<std::string> first = ReadFirstToken(tokens_);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, kAliceToken);
}

TEST_F(SecurityTest, BadTokenFilesAreRefusedWithTheirLine) {
  const std::string path = dir_.path() + "/bad";
  auto error = [&](const std::string& text) {
    EXPECT_TRUE(testing::WriteSecretFile(path, text).ok());
    absl::StatusOr<std::vector<NamedToken>> t = ReadTokenFile(path);
    EXPECT_FALSE(t.ok()) << text;
    return std::string(t.status().message());
  };
  EXPECT_THAT(error("bob:short\n"), HasSubstr("line 1: a token must have at least 16"));
  EXPECT_THAT(error("# none\n\n"), HasSubstr("holds no token"));
  EXPECT_THAT(error("a:0123456789abcdef\nb:0123456789abcdef\n"), HasSubstr("line 2: the same"));
  EXPECT_THAT(error(":0123456789abcdef\n"), HasSubstr("empty name"));
  EXPECT_THAT(error("x:0123456789 abcdef\n"), HasSubstr("without spaces"));
  absl::StatusOr<std::vector<NamedToken>> missing = ReadTokenFile(dir_.path() + "/absent");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("absent"));
}

TEST_F(SecurityTest, BadTlsFilesAreRefusedNamingTheFlag) {
  auto server_error = [&](SecurityOptions o) {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> c = ServerCredentials(o);
    EXPECT_FALSE(c.ok());
    return std::string(c.status().message());
  };
  SecurityOptions o;
  o.tls_cert_file = pki_.node_cert;
  EXPECT_THAT(server_error(o), HasSubstr("tls_cert_file needs tls_key_file"));
  o.tls_key_file = pki_.client_key;
  EXPECT_THAT(server_error(o), HasSubstr("is not the key of tls_cert_file"));
  o.tls_key_file = pki_.node_key;
  o.tls_ca_file = tokens_;
  EXPECT_THAT(server_error(o), HasSubstr("tls_ca_file '" + tokens_ + "': no PEM certificate"));
  o.tls_ca_file = dir_.path() + "/absent.pem";
  EXPECT_THAT(server_error(o), HasSubstr("tls_ca_file '" + o.tls_ca_file + "': cannot open"));
  SecurityOptions expired;
  expired.tls_cert_file = pki_.expired_cert;
  expired.tls_key_file = pki_.expired_key;
  EXPECT_THAT(server_error(expired), HasSubstr("has expired"));
  SecurityOptions key_only;
  key_only.tls_key_file = pki_.node_key;
  EXPECT_THAT(server_error(key_only), HasSubstr("need tls_cert_file"));
  SecurityOptions both_tokens;
  both_tokens.tls_cert_file = pki_.node_cert;
  both_tokens.tls_key_file = pki_.node_key;
  both_tokens.auth_token_file = tokens_;
  both_tokens.cluster_token_file = tokens_;  // Its first token is alice's.
  EXPECT_THAT(server_error(both_tokens), HasSubstr("is also the client token 'alice'"));

  ChannelSecurity c;
  c.cert_file = pki_.client_cert;
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> cc = MakeChannelCredentials(c);
  EXPECT_THAT(std::string(cc.status().message()), HasSubstr("tls_cert_file needs tls_key_file"));
  c.key_file = pki_.node_key;
  cc = MakeChannelCredentials(c);
  EXPECT_THAT(std::string(cc.status().message()), HasSubstr("is not the key"));
}

TEST_F(SecurityTest, TokensWithoutTlsAreRefusedAtBothEnds) {
  SecurityOptions o;
  o.auth_token_file = tokens_;
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> s = ServerCredentials(o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("needs TLS"));
  // The cluster token is allowed in clear text, as the cluster secret only:
  // never as a bearer token there.
  o.auth_token_file.clear();
  o.cluster_token_file = cluster_;
  EXPECT_TRUE(ServerCredentials(o).ok());
  absl::StatusOr<ChannelSecurity> peer = PeerChannelSecurity(o);
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ(peer->token, "");
  EXPECT_EQ(peer->cluster_secret, kClusterToken);
  ChannelSecurity c;
  c.token = kAliceToken;
  EXPECT_EQ(MakeChannelCredentials(c).status().code(), absl::StatusCode::kFailedPrecondition);
  c.tls = true;
  EXPECT_TRUE(MakeChannelCredentials(c).ok());
}

TEST_F(SecurityTest, PublicApiNeedsAClientToken) {
  ServeTlsWithTokens();
  Reply none = Status(Channel(Tls()));
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(none.status.error_message(), HasSubstr("needs a client token"));
  Reply wrong = Status(Channel(Tls("not-a-token-0123456789")));
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  Reply basic = Status(Channel(Tls()), "Basic YWxpY2U6c2VjcmV0");
  EXPECT_EQ(basic.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(basic.status.error_message(), HasSubstr("not 'Bearer <token>'"));
  Reply cluster = Status(Channel(Tls(kClusterToken)));
  EXPECT_EQ(cluster.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);

  Reply alice = Status(Channel(Tls(kAliceToken)));
  ASSERT_TRUE(alice.status.ok()) << alice.status.error_message();
  EXPECT_EQ(alice.identity, "alice");
  EXPECT_EQ(alice.proven, "alice");
  Reply anonymous = Status(Channel(Tls()), absl::StrCat("Bearer ", kAnonymousToken));
  ASSERT_TRUE(anonymous.status.ok()) << anonymous.status.error_message();
  EXPECT_EQ(anonymous.identity, "client-4");
}

TEST_F(SecurityTest, WorkerApiNeedsTheClusterToken) {
  ServeTlsWithTokens();
  Reply none = WorkerRelease(Channel(Tls()));
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(none.status.error_message(), HasSubstr("needs the cluster token"));
  Reply client = WorkerRelease(Channel(Tls(kAliceToken)));
  EXPECT_EQ(client.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(client.status.error_message(), HasSubstr("does not open the worker API"));
  Reply cluster = WorkerRelease(Channel(Tls(kClusterToken)));
  ASSERT_TRUE(cluster.status.ok()) << cluster.status.error_message();
  EXPECT_EQ(cluster.identity, "cluster");
}

TEST_F(SecurityTest, HealthIsOpenAndOtherMethodsNeedSomeToken) {
  ServeTlsWithTokens();
  EXPECT_TRUE(Health(Channel(Tls())).ok());
  EXPECT_EQ(Unknown(Channel(Tls())).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // Past the check, the method does not exist.
  EXPECT_EQ(Unknown(Channel(Tls(kAliceToken))).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(Unknown(Channel(Tls(kClusterToken))).error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(SecurityTest, AnApiWithoutItsKindOfTokenIsOpen) {
  SecurityOptions o;
  o.tls_cert_file = pki_.node_cert;
  o.tls_key_file = pki_.node_key;
  o.cluster_token_file = cluster_;
  Serve(o);
  Reply open = Status(Channel(Tls()));
  EXPECT_TRUE(open.status.ok()) << open.status.error_message();
  EXPECT_EQ(open.proven, "no");  // TLS alone proves nothing about the caller.
  EXPECT_EQ(WorkerRelease(Channel(Tls())).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(SecurityTest, MutualTlsNamesTheCertificateAndRefusesStrangers) {
  SecurityOptions o;
  o.tls_cert_file = pki_.node_cert;
  o.tls_key_file = pki_.node_key;
  o.tls_ca_file = pki_.ca_cert;
  Serve(o);
  ChannelSecurity trainer = Tls();
  trainer.cert_file = pki_.client_cert;
  trainer.key_file = pki_.client_key;
  Reply r = Status(Channel(trainer));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.identity, "cert:trainer");
  EXPECT_EQ(r.proven, "cert:trainer");

  EXPECT_EQ(Status(Channel(Tls())).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  ChannelSecurity rogue = Tls();
  rogue.cert_file = pki_.rogue_cert;
  rogue.key_file = pki_.rogue_key;
  EXPECT_EQ(Status(Channel(rogue)).status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(SecurityTest, ClientsCheckTheServerCertificate) {
  SecurityOptions o;
  o.tls_cert_file = pki_.node_cert;
  o.tls_key_file = pki_.node_key;
  Serve(o);
  // The name override must match the certificate (it names localhost).
  ChannelSecurity by_name = Tls();
  by_name.server_name = "localhost";
  EXPECT_TRUE(Status(Channel(by_name)).status.ok());
  ChannelSecurity wrong_name = Tls();
  wrong_name.server_name = "elsewhere.example";
  EXPECT_EQ(Status(Channel(wrong_name)).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  ChannelSecurity other_ca;
  other_ca.ca_file = pki_.other_ca_cert;
  EXPECT_EQ(Status(Channel(other_ca)).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(Status(Channel(ChannelSecurity{})).status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(SecurityTest, InsecureServersNameThePeer) {
  Serve(SecurityOptions{});
  Reply r = Status(Channel(ChannelSecurity{}));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_THAT(r.identity, HasSubstr("127.0.0.1:"));
  EXPECT_EQ(r.proven, "no");
}

}  // namespace
}  // namespace ringattn::wire
