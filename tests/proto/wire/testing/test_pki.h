#ifndef RINGATTN_TESTS_PROTO_WIRE_TESTING_TEST_PKI_H_
#define RINGATTN_TESTS_PROTO_WIRE_TESTING_TEST_PKI_H_

#include <string>

#include "absl/status/statusor.h"

namespace ringattn::wire::testing {

// A throwaway PKI made at run time (P-256 keys), as PEM files in one
// directory: no key is ever committed. Leaf certificates name 127.0.0.1
// and localhost, where the tests' daemons listen.
struct TestPki {
  std::string dir;
  std::string ca_cert;                    // The cluster's CA.
  std::string node_cert, node_key;        // serverAuth + clientAuth: every daemon.
  std::string client_cert, client_key;    // clientAuth, CN "trainer": a training job.
  std::string other_ca_cert;              // A CA nobody trusts...
  std::string rogue_cert, rogue_key;      // ...and a node certificate it signed.
  std::string expired_cert, expired_key;  // Signed by the CA, expired yesterday.
};

// Writes a fresh PKI into `dir` (which must exist).
absl::StatusOr<TestPki> MakeTestPki(const std::string& dir);

// Writes `text` to `path` with mode 0600 (token files, say).
absl::Status WriteSecretFile(const std::string& path, const std::string& text);

}  // namespace ringattn::wire::testing

#endif  // RINGATTN_TESTS_PROTO_WIRE_TESTING_TEST_PKI_H_
