#include "tests/proto/wire/testing/test_pki.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ringattn::wire::testing {
namespace {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Bio = std::unique_ptr<BIO, BioFree>;

absl::Status OpenSslError(const std::string& what) {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  return absl::InternalError(
      absl::StrCat(what, ": ", e == 0 ? "unknown" : ERR_error_string(e, nullptr)));
}

struct Issued {
  X509Ptr cert;
  PkeyPtr key;
};

absl::Status AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr) return OpenSslError(absl::StrCat("extension ", value));
  const int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return ok == 1 ? absl::OkStatus() : OpenSslError("X509_add_ext");
}

struct Spec {
  std::string cn;
  bool ca = false;
  const char* eku = nullptr;  // extendedKeyUsage, for leaves.
  long not_before_s = -3600;
  long not_after_s = 2 * 86400;
};

// A certificate for `spec`, signed by `issuer` (self-signed when null).
absl::StatusOr<Issued> Issue(const Spec& spec, const Issued* issuer, long serial) {
  Issued out;
  out.key.reset(EVP_EC_gen("P-256"));
  if (!out.key) return OpenSslError("EVP_EC_gen");
  out.cert.reset(X509_new());
  X509* x = out.cert.get();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
  X509_gmtime_adj(X509_getm_notBefore(x), spec.not_before_s);
  X509_gmtime_adj(X509_getm_notAfter(x), spec.not_after_s);
  X509_set_pubkey(x, out.key.get());
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(spec.cn.c_str()), -1, -1, 0);
  X509* issuer_cert = issuer ? issuer->cert.get() : x;
  X509_set_issuer_name(x, X509_get_subject_name(issuer_cert));
  std::vector<std::pair<int, const char*>> extensions;
  if (spec.ca) {
    extensions = {{NID_basic_constraints, "critical,CA:TRUE"},
                  {NID_key_usage, "critical,keyCertSign,cRLSign"}};
  } else {
    extensions = {{NID_basic_constraints, "critical,CA:FALSE"},
                  {NID_key_usage, "critical,digitalSignature"},
                  {NID_ext_key_usage, spec.eku},
                  {NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost"}};
  }
  for (const auto& [nid, value] : extensions) {
    if (absl::Status s = AddExtension(x, issuer_cert, nid, value); !s.ok()) return s;
  }
  EVP_PKEY* signer = issuer ? issuer->key.get() : out.key.get();
  if (X509_sign(x, signer, EVP_sha256()) == 0) return OpenSslError("X509_sign");
  return out;
}

absl::Status WritePem(const Issued& issued, const std::string& cert_path,
                      const std::string& key_path) {
  Bio cert(BIO_new_file(cert_path.c_str(), "w"));
  if (!cert || PEM_write_bio_X509(cert.get(), issued.cert.get()) != 1) {
    return OpenSslError(absl::StrCat("write ", cert_path));
  }
  if (key_path.empty()) return absl::OkStatus();
  Bio key(BIO_new_file(key_path.c_str(), "w"));
  if (!key || PEM_write_bio_PrivateKey(key.get(), issued.key.get(), nullptr, nullptr, 0, nullptr,
                                       nullptr) != 1) {
    return OpenSslError(absl::StrCat("write ", key_path));
  }
  chmod(key_path.c_str(), 0600);
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteSecretFile(const std::string& path, const std::string& text) {
  {
    std::ofstream out(path, std::ios::trunc);
    out << text;
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  }
  chmod(path.c_str(), 0600);
  return absl::OkStatus();
}

absl::StatusOr<TestPki> MakeTestPki(const std::string& dir) {
  TestPki pki;
  pki.dir = dir;
  auto path = [&](const char* name) { return absl::StrCat(dir, "/", name); };
  absl::StatusOr<Issued> ca = Issue({.cn = "ringattn test CA", .ca = true}, nullptr, 1);
  if (!ca.ok()) return ca.status();
  absl::StatusOr<Issued> node =
      Issue({.cn = "ringattn node", .eku = "serverAuth,clientAuth"}, &*ca, 2);
  if (!node.ok()) return node.status();
  absl::StatusOr<Issued> client = Issue({.cn = "trainer", .eku = "clientAuth"}, &*ca, 3);
  if (!client.ok()) return client.status();
  absl::StatusOr<Issued> expired = Issue({.cn = "ringattn node",
                                          .eku = "serverAuth,clientAuth",
                                          .not_before_s = -3 * 86400,
                                          .not_after_s = -86400},
                                         &*ca, 4);
  if (!expired.ok()) return expired.status();
  absl::StatusOr<Issued> other = Issue({.cn = "another CA", .ca = true}, nullptr, 1);
  if (!other.ok()) return other.status();
  absl::StatusOr<Issued> rogue =
      Issue({.cn = "ringattn node", .eku = "serverAuth,clientAuth"}, &*other, 2);
  if (!rogue.ok()) return rogue.status();

  pki.ca_cert = path("ca.pem");
  pki.node_cert = path("node.pem");
  pki.node_key = path("node.key");
  pki.client_cert = path("client.pem");
  pki.client_key = path("client.key");
  pki.other_ca_cert = path("other_ca.pem");
  pki.rogue_cert = path("rogue.pem");
  pki.rogue_key = path("rogue.key");
  pki.expired_cert = path("expired.pem");
  pki.expired_key = path("expired.key");
  for (absl::Status s :
       {WritePem(*ca, pki.ca_cert, ""), WritePem(*node, pki.node_cert, pki.node_key),
        WritePem(*client, pki.client_cert, pki.client_key), WritePem(*other, pki.other_ca_cert, ""),
        WritePem(*rogue, pki.rogue_cert, pki.rogue_key),
        WritePem(*expired, pki.expired_cert, pki.expired_key)}) {
    if (!s.ok()) return s;
  }
  return pki;
}

}  // namespace ringattn::wire::testing
