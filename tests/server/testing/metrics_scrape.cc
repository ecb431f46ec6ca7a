#include "tests/server/testing/metrics_scrape.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ringattn::server::testing {
namespace {

// Closes the socket on every path out.
class Socket {
 public:
  Socket() : fd_(socket(AF_INET, SOCK_STREAM, 0)) {}
  ~Socket() {
    if (fd_ >= 0) close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path,
                                    absl::Duration timeout) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return absl::InvalidArgumentError("address needs a port");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::atoi(address.substr(colon + 1).c_str())));
  if (inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("not an IPv4 address: ", address));
  }
  Socket s;
  if (s.fd() < 0) return absl::InternalError("socket() failed");
  const timeval tv = absl::ToTimeval(timeout);
  setsockopt(s.fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(s.fd(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(s.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", address));
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", address, "\r\nConnection: close\r\n\r\n");
  if (send(s.fd(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    return absl::UnavailableError("send failed");
  }
  std::string response;
  char buf[16384];
  while (true) {
    const ssize_t n = recv(s.fd(), buf, sizeof(buf), 0);
    if (n < 0) return absl::DeadlineExceededError(absl::StrCat("no answer from ", address));
    if (n == 0) break;
    response.append(buf, static_cast<size_t>(n));
  }
  const size_t body = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.") || body == std::string::npos) {
    return absl::DataLossError("not an HTTP response");
  }
  if (response.find(" 200 ") > response.find("\r\n")) {
    return absl::UnavailableError(
        absl::StrCat("HTTP status: ", response.substr(0, response.find("\r\n"))));
  }
  return response.substr(body + 4);
}

std::optional<double> SampleValue(const std::string& exposition, const std::string& name,
                                  const std::map<std::string, std::string>& labels) {
  std::istringstream lines(exposition);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#' || !absl::StartsWith(line, name)) continue;
    const char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != '{' && next != ' ') continue;  // A longer name sharing the prefix.
    bool match = true;
    for (const auto& [key, value] : labels) {
      match &= absl::StrContains(line, absl::StrCat(key, "=\"", value, "\""));
    }
    if (!match) continue;
    const size_t space = line.rfind(' ');
    return std::strtod(line.c_str() + space + 1, nullptr);
  }
  return std::nullopt;
}

std::optional<double> Scrape(const std::string& address, const std::string& name,
                             const std::map<std::string, std::string>& labels) {
  absl::StatusOr<std::string> body = HttpGet(address, "/metrics");
  if (!body.ok()) return std::nullopt;
  return SampleValue(*body, name, labels);
}

}  // namespace ringattn::server::testing
