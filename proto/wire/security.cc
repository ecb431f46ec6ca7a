#include "proto/wire/security.h"

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpc/grpc_security_constants.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/auth_metadata_processor.h"
#include "proto/wire/cluster_secret.h"
#include "proto/wire/grpc_status.h"

namespace ringattn::wire {
namespace {

// The auth context property that carries the name of a call's token.
constexpr char kClientProperty[] = "ringattn_client";
// Set only by TokenCheck, when a call presented the cluster token: callers
// cannot add auth context properties, so it cannot be forged.
constexpr char kClusterProperty[] = "ringattn_cluster_token";
constexpr char kClusterName[] = "cluster";
constexpr size_t kMinTokenLength = 16;

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

// OpenSSL's reason for the last failure, and a clean error queue for gRPC.
std::string OpenSslReason() {
  const unsigned long e = ERR_peek_last_error();
  std::string reason = e == 0                       ? "not PEM"
                       : ERR_reason_error_string(e) ? ERR_reason_error_string(e)
                                                    : "unknown error";
  ERR_clear_error();
  return reason;
}

absl::StatusOr<std::string> ReadFile(const std::string& what, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    return absl::NotFoundError(absl::StrCat(what, " '", path, "': cannot open: ", strerror(err)));
  }
  std::ostringstream data;
  data << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(what, " '", path, "': read failed"));
  return data.str();
}

Bio MemBio(const std::string& data) {
  return Bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

// Never prompts on a terminal for a passphrase: encrypted keys are refused.
int NoPassphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*u*/) { return 0; }

// A PEM certificate file: its text, and its first certificate in `first`.
absl::StatusOr<std::string> LoadCertificates(const std::string& what, const std::string& path,
                                             X509Ptr* first) {
  absl::StatusOr<std::string> pem = ReadFile(what, path);
  if (!pem.ok()) return pem.status();
  Bio bio = MemBio(*pem);
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!cert) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", path, "': no PEM certificate in it (", OpenSslReason(), ")"));
  }
  ERR_clear_error();
  if (X509_cmp_current_time(X509_get0_notAfter(cert.get())) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", path, "': the certificate has expired"));
  }
  if (X509_cmp_current_time(X509_get0_notBefore(cert.get())) > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", path, "': the certificate is not valid yet"));
  }
  if (first != nullptr) *first = std::move(cert);
  return pem;
}

// A certificate chain and its key, checked to belong together.
struct KeyPair {
  std::string cert;
  std::string key;
};

absl::StatusOr<KeyPair> LoadKeyPair(const std::string& cert_what, const std::string& cert_path,
                                    const std::string& key_what, const std::string& key_path) {
  if (key_path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(cert_what, " needs ", key_what));
  }
  X509Ptr leaf;
  absl::StatusOr<std::string> cert = LoadCertificates(cert_what, cert_path, &leaf);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile(key_what, key_path);
  if (!key.ok()) return key.status();
  Bio bio = MemBio(*key);
  PkeyPtr pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!pkey) {
    return absl::InvalidArgumentError(absl::StrCat(key_what, " '", key_path,
                                                   "': no unencrypted PEM private key in it (",
                                                   OpenSslReason(), ")"));
  }
  if (X509_check_private_key(leaf.get(), pkey.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(key_what, " '", key_path, "' is not the key of ",
                                                   cert_what, " '", cert_path, "'"));
  }
  return KeyPair{*std::move(cert), *std::move(key)};
}

absl::Status CheckTokenText(const std::string& token) {
  if (token.size() < kMinTokenLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("a token must have at least ", kMinTokenLength, " characters"));
  }
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError("a token is printable ASCII without spaces");
    }
  }
  return absl::OkStatus();
}

bool SameSecret(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

// Tokens are compared as SHA-256 digests: in constant time, whatever their
// lengths, and the check keeps no token in clear.
using Digest = std::array<unsigned char, 32>;

Digest Sha256(const std::string& text) {
  Digest d{};
  unsigned int size = 0;
  EVP_Digest(text.data(), text.size(), d.data(), &size, EVP_sha256(), nullptr);
  return d;
}

bool SameDigest(const Digest& a, const Digest& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string Str(grpc::string_ref s) { return std::string(s.data(), s.size()); }

// Which kind of token a method needs.
enum class Api { kOpen, kPublic, kCluster, kOther };

Api ApiOf(const std::string& path) {
  if (absl::StartsWith(path, "/grpc.health.v1.Health/")) return Api::kOpen;
  if (absl::StartsWith(path, "/ringattn.attention.")) return Api::kPublic;
  if (absl::StartsWith(path, "/ringattn.worker.")) return Api::kCluster;
  return Api::kOther;
}

// Checks the bearer token of every call against the method's API (see the
// table in security.h) and records the token's name in the call's auth
// context for ClientIdentity.
class TokenCheck final : public grpc::AuthMetadataProcessor {
 public:
  TokenCheck(const std::vector<NamedToken>& clients, const std::optional<std::string>& cluster) {
    for (const NamedToken& t : clients) clients_.emplace_back(t.name, Sha256(t.token));
    if (cluster) cluster_ = Sha256(*cluster);
  }

  // A few string compares: run inline on gRPC's thread.
  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& metadata, grpc::AuthContext* context,
                       OutputMetadata* consumed, OutputMetadata* /*response*/) override {
    const auto path = metadata.find(":path");
    const Api api = ApiOf(path == metadata.end() ? std::string() : Str(path->second));
    const auto header = metadata.find("authorization");
    std::optional<std::string> token;
    bool malformed = false;
    if (header != metadata.end()) {
      consumed->insert({Str(header->first), Str(header->second)});
      std::string value = Str(header->second);
      if (absl::StartsWithIgnoreCase(value, "Bearer ")) {
        token = std::string(absl::StripAsciiWhitespace(value.substr(7)));
      } else {
        malformed = true;
      }
    }
    // The name of a presented token, and whether it is the cluster's.
    std::optional<std::string> name;
    bool cluster = false;
    if (token) {
      const Digest presented = Sha256(*token);
      if (cluster_ && SameDigest(presented, *cluster_)) {
        name = kClusterName;
        cluster = true;
      }
      for (const auto& [client, digest] : clients_) {
        if (SameDigest(presented, digest)) name = client;
      }
    }
    if (name) context->AddProperty(kClientProperty, *name);
    if (cluster) context->AddProperty(kClusterProperty, "1");

    const bool needs_client = api == Api::kPublic && !clients_.empty();
    const bool needs_cluster = api == Api::kCluster && cluster_.has_value();
    const bool needs_any = api == Api::kOther && (!clients_.empty() || cluster_.has_value());
    if (!needs_client && !needs_cluster && !needs_any) return grpc::Status::OK;
    const char* what = needs_client    ? "the public API needs a client token"
                       : needs_cluster ? "the worker API needs the cluster token"
                                       : "this method needs a token";
    if (malformed) {
      return ToGrpc(absl::UnauthenticatedError(
          absl::StrCat("the authorization metadata is not 'Bearer <token>'; ", what)));
    }
    if (!token) {
      return ToGrpc(absl::UnauthenticatedError(
          absl::StrCat("no 'authorization: Bearer <token>' metadata; ", what)));
    }
    if (!name) {
      return ToGrpc(
          absl::UnauthenticatedError(absl::StrCat("the token is not valid here; ", what)));
    }
    if (needs_client && cluster) {
      return ToGrpc(absl::PermissionDeniedError(
          "the cluster token does not open the public API; use a client token"));
    }
    if (needs_cluster && !cluster) {
      return ToGrpc(absl::PermissionDeniedError("a client token does not open the worker API"));
    }
    return grpc::Status::OK;
  }

 private:
  std::vector<std::pair<std::string, Digest>> clients_;  // Name and token digest.
  std::optional<Digest> cluster_;
};

}  // namespace

absl::StatusOr<std::vector<NamedToken>> ReadTokenFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile("token file", path);
  if (!text.ok()) return text.status();
  std::vector<NamedToken> tokens;
  std::set<std::string> seen;
  int line_number = 0;
  for (absl::string_view raw : absl::StrSplit(*text, '\n')) {
    ++line_number;
    const absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (line.empty() || line[0] == '#') continue;
    NamedToken t;
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) {
      t.name = absl::StrCat("client-", line_number);
      t.token = std::string(line);
    } else {
      t.name = std::string(absl::StripAsciiWhitespace(line.substr(0, colon)));
      t.token = std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      if (t.name.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("token file '", path, "' line ", line_number, ": empty name before ':'"));
      }
    }
    if (absl::Status s = CheckTokenText(t.token); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("token file '", path, "' line ", line_number, ": ", s.message()));
    }
    if (!seen.insert(t.token).second) {
      return absl::InvalidArgumentError(absl::StrCat("token file '", path, "' line ", line_number,
                                                     ": the same token is listed twice"));
    }
    tokens.push_back(std::move(t));
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("token file '", path, "' holds no token"));
  }
  return tokens;
}

absl::StatusOr<std::string> ReadFirstToken(const std::string& path) {
  absl::StatusOr<std::vector<NamedToken>> tokens = ReadTokenFile(path);
  if (!tokens.ok()) return tokens.status();
  return tokens->front().token;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ChannelSecurity& security) {
  if (!security.token.empty()) {
    if (absl::Status s = CheckTokenText(security.token); !s.ok()) return s;
  }
  if (!security.UsesTls()) {
    if (!security.key_file.empty()) {
      return absl::InvalidArgumentError("tls_key_file needs tls_cert_file");
    }
    if (!security.token.empty()) {
      return absl::FailedPreconditionError(
          "a token needs TLS (tls_ca_file, or tls): a bearer token sent in clear text is anyone's");
    }
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions ssl;
  if (!security.ca_file.empty()) {
    absl::StatusOr<std::string> ca = LoadCertificates("tls_ca_file", security.ca_file, nullptr);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  if (!security.cert_file.empty()) {
    absl::StatusOr<KeyPair> pair =
        LoadKeyPair("tls_cert_file", security.cert_file, "tls_key_file", security.key_file);
    if (!pair.ok()) return pair.status();
    ssl.pem_cert_chain = std::move(pair->cert);
    ssl.pem_private_key = std::move(pair->key);
  } else if (!security.key_file.empty()) {
    return absl::InvalidArgumentError("tls_key_file needs tls_cert_file");
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::SslCredentials(ssl);
  if (!security.token.empty()) {
    creds = grpc::CompositeChannelCredentials(creds, grpc::AccessTokenCredentials(security.token));
  }
  if (!creds) return absl::InternalError("gRPC refused the channel credentials");
  return creds;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateChannel(const std::string& target,
                                                             const ChannelSecurity& security,
                                                             grpc::ChannelArguments args) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      MakeChannelCredentials(security);
  if (!creds.ok()) return creds.status();
  if (!security.server_name.empty()) args.SetSslTargetNameOverride(security.server_name);
  return CreateChannelWithSecret(target, *creds, args, security.cluster_secret);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const SecurityOptions& options) {
  std::vector<NamedToken> clients;
  if (!options.auth_token_file.empty()) {
    absl::StatusOr<std::vector<NamedToken>> t = ReadTokenFile(options.auth_token_file);
    if (!t.ok()) {
      return absl::Status(t.status().code(),
                          absl::StrCat("auth_token_file: ", t.status().message()));
    }
    clients = *std::move(t);
  }
  std::optional<std::string> cluster;
  if (!options.cluster_token_file.empty()) {
    absl::StatusOr<std::string> t = ReadFirstToken(options.cluster_token_file);
    if (!t.ok()) {
      return absl::Status(t.status().code(),
                          absl::StrCat("cluster_token_file: ", t.status().message()));
    }
    cluster = *std::move(t);
    for (const NamedToken& c : clients) {
      if (SameSecret(c.token, *cluster)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the cluster token is also the client token '", c.name, "': they must differ"));
      }
    }
  }
  if (!options.UsesTls()) {
    if (!options.tls_key_file.empty() || !options.tls_ca_file.empty()) {
      return absl::InvalidArgumentError("tls_key_file and tls_ca_file need tls_cert_file");
    }
    // The cluster token needs no TLS: in clear text it is the cluster secret
    // (cluster_secret.h), which keeps out callers that cannot read the
    // network, as the generated one does.
    if (!clients.empty()) {
      return absl::FailedPreconditionError(
          "auth_token_file needs TLS (tls_cert_file, tls_key_file): a bearer token sent in clear "
          "text is anyone's");
    }
    return grpc::InsecureServerCredentials();
  }
  absl::StatusOr<KeyPair> pair =
      LoadKeyPair("tls_cert_file", options.tls_cert_file, "tls_key_file", options.tls_key_file);
  if (!pair.ok()) return pair.status();
  const bool mutual = !options.tls_ca_file.empty() && options.tls_require_client_cert;
  grpc::SslServerCredentialsOptions ssl(
      mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
             : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  ssl.pem_key_cert_pairs.push_back({std::move(pair->key), std::move(pair->cert)});
  if (!options.tls_ca_file.empty()) {
    absl::StatusOr<std::string> ca = LoadCertificates("tls_ca_file", options.tls_ca_file, nullptr);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::SslServerCredentials(ssl);
  if (!clients.empty() || cluster) {
    creds->SetAuthMetadataProcessor(std::make_shared<TokenCheck>(clients, cluster));
  }
  return creds;
}

absl::StatusOr<ChannelSecurity> PeerChannelSecurity(const SecurityOptions& options) {
  ChannelSecurity s;
  if (options.UsesTls()) {
    s.tls = true;
    s.ca_file = options.tls_ca_file;
    s.cert_file = options.tls_cert_file;
    s.key_file = options.tls_key_file;
  }
  if (!options.cluster_token_file.empty()) {
    absl::StatusOr<std::string> t = ReadFirstToken(options.cluster_token_file);
    if (!t.ok()) {
      return absl::Status(t.status().code(),
                          absl::StrCat("cluster_token_file: ", t.status().message()));
    }
    s.cluster_secret = *t;
    // As a bearer token only over TLS; in clear text the secret alone.
    if (s.tls) s.token = *std::move(t);
  }
  // Checks files and the TLS-for-tokens rule now, not at the first call.
  if (absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> c = MakeChannelCredentials(s);
      !c.ok()) {
    return c.status();
  }
  return s;
}

std::string ClientIdentity(const grpc::ServerContextBase& context) {
  std::optional<std::string> proven = ProvenClientIdentity(context);
  return proven ? *std::move(proven) : context.peer();
}

bool CarriesClusterToken(const grpc::ServerContextBase& context) {
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  return auth && !auth->FindPropertyValues(kClusterProperty).empty();
}

std::optional<std::string> ProvenClientIdentity(const grpc::ServerContextBase& context) {
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth) {
    const std::vector<grpc::string_ref> names = auth->FindPropertyValues(kClientProperty);
    if (!names.empty()) return Str(names.back());
    const std::vector<grpc::string_ref> cn = auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
    if (!cn.empty()) return absl::StrCat("cert:", Str(cn.front()));
  }
  return std::nullopt;
}

}  // namespace ringattn::wire
