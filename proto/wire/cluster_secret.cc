#include "proto/wire/cluster_secret.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/support/client_interceptor.h"
#include "proto/wire/security.h"

namespace ringattn::wire {
namespace {

// Adds the secret to a call's initial metadata.
class SecretInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit SecretInterceptor(std::string secret) : secret_(std::move(secret)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace(kClusterSecretMetadata, secret_);
    }
    methods->Proceed();
  }

 private:
  const std::string secret_;
};

class SecretInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit SecretInterceptorFactory(std::string secret) : secret_(std::move(secret)) {}

  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* /*info*/) override {
    // gRPC takes ownership of the interceptor and deletes it with the call.
    return new SecretInterceptor(secret_);  // NOLINT(cppcoreguidelines-owning-memory)
  }

 private:
  const std::string secret_;
};

bool SameText(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string SecretDir() {
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  // A runtime folder that is not there or not ours to write (a stale
  // variable under sudo) is passed over for /tmp.
  if (runtime != nullptr && runtime[0] == '/' && access(runtime, W_OK | X_OK) == 0) {
    return absl::StrCat(runtime, "/ringattn");
  }
  return absl::StrCat("/tmp/ringattn-", getuid());
}

// OK when `path` is this user's and open to nobody else.
absl::Status OwnedAndPrivate(const std::string& path, const struct stat& st) {
  if (st.st_uid != getuid()) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " belongs to uid ", st.st_uid, ", not this user: not a secret"));
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s is open to other users (mode %o): not a secret", path, st.st_mode & 0777));
  }
  return absl::OkStatus();
}

absl::Status CheckDir(const std::string& dir) {
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(dir, ": ", std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " is not a folder"));
  }
  return OwnedAndPrivate(dir, st);
}

}  // namespace

absl::Status CheckClusterSecret(const grpc::ServerContextBase& context, const std::string& secret) {
  if (CarriesClusterToken(context)) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find(kClusterSecretMetadata);
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        "the internal APIs need the cluster secret: their calls come from the cluster's own "
        "daemons");
  }
  if (secret.empty() || !SameText(std::string(it->second.data(), it->second.size()), secret)) {
    return absl::UnauthenticatedError("the cluster secret is wrong: not a daemon of this cluster");
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::Channel> CreateChannelWithSecret(
    const std::string& target, const std::shared_ptr<grpc::ChannelCredentials>& creds,
    const grpc::ChannelArguments& args, const std::string& secret) {
  if (secret.empty()) return grpc::CreateCustomChannel(target, creds, args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<SecretInterceptorFactory>(secret));
  return grpc::experimental::CreateCustomChannelWithInterceptors(target, creds, args,
                                                                 std::move(interceptors));
}

absl::StatusOr<std::string> NewClusterSecret() {
  std::array<unsigned char, 16> bits{};
  if (RAND_bytes(bits.data(), static_cast<int>(bits.size())) != 1) {
    return absl::InternalError("the random source gave no bytes for a cluster secret");
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bits.data()), bits.size()));
}

std::string LocalClusterSecretPath(int port) {
  return absl::StrCat(SecretDir(), "/cluster-", port, ".secret");
}

absl::StatusOr<std::string> ReadLocalClusterSecret(int port) {
  const std::string dir = SecretDir();
  if (absl::Status s = CheckDir(dir); !s.ok()) return s;
  const std::string path = LocalClusterSecretPath(port);
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string why = absl::StrCat(path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(why) : absl::FailedPreconditionError(why);
  }
  struct stat st {};
  absl::Status s = fstat(fd, &st) == 0 ? OwnedAndPrivate(path, st)
                                       : absl::InternalError(absl::StrCat(path, ": fstat"));
  std::string text(128, '\0');
  const ssize_t n = s.ok() ? read(fd, text.data(), text.size()) : 0;
  close(fd);
  if (!s.ok()) return s;
  text.resize(n > 0 ? static_cast<size_t>(n) : 0);
  std::string secret(absl::StripAsciiWhitespace(text));
  if (secret.size() < 16) {
    return absl::FailedPreconditionError(absl::StrCat(path, " holds no secret"));
  }
  return secret;
}

absl::Status WriteLocalClusterSecret(int port, const std::string& secret) {
  const std::string dir = SecretDir();
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(absl::StrCat(dir, ": ", std::strerror(errno)));
  }
  if (absl::Status s = CheckDir(dir); !s.ok()) return s;
  const std::string path = LocalClusterSecretPath(port);
  const std::string tmp = absl::StrCat(path, ".", getpid(), ".tmp");
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return absl::FailedPreconditionError(absl::StrCat(tmp, ": ", std::strerror(errno)));
  const std::string text = secret + "\n";
  const bool written = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  if (!written || rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    unlink(tmp.c_str());
    return absl::FailedPreconditionError(absl::StrCat(path, ": ", why));
  }
  return absl::OkStatus();
}

}  // namespace ringattn::wire
