#include "proto/wire/cluster_secret.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <set>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace ringattn::wire {
namespace {

// Points XDG_RUNTIME_DIR at a fresh folder for the test, and back after.
class LocalSecretTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ringattn_secret_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    if (const char* old = std::getenv("XDG_RUNTIME_DIR")) saved_ = old;
    setenv("XDG_RUNTIME_DIR", root_.c_str(), 1);
  }
  void TearDown() override {
    if (saved_) {
      setenv("XDG_RUNTIME_DIR", saved_->c_str(), 1);
    } else {
      unsetenv("XDG_RUNTIME_DIR");
    }
    std::filesystem::remove_all(root_);
  }

  std::string root_;
  std::optional<std::string> saved_;
};

TEST(ClusterSecretTest, NewSecretsAre128RandomBitsInHex) {
  std::set<std::string> seen;
  for (int i = 0; i < 16; ++i) {
    absl::StatusOr<std::string> s = NewClusterSecret();
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ(s->size(), 32u);
    for (char c : *s) EXPECT_TRUE(absl::ascii_isxdigit(c)) << *s;
    seen.insert(*s);
  }
  EXPECT_EQ(seen.size(), 16u);
}

TEST_F(LocalSecretTest, WrittenPrivatelyAndReadBackPerPort) {
  EXPECT_EQ(LocalClusterSecretPath(4321), root_ + "/ringattn/cluster-4321.secret");
  EXPECT_EQ(ReadLocalClusterSecret(4321).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(WriteLocalClusterSecret(4321, "0123456789abcdef0123456789abcdef").ok());
  absl::StatusOr<std::string> got = ReadLocalClusterSecret(4321);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "0123456789abcdef0123456789abcdef");
  EXPECT_EQ(ReadLocalClusterSecret(4322).status().code(), absl::StatusCode::kNotFound);
  struct stat st {};
  ASSERT_EQ(stat((root_ + "/ringattn").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(stat(LocalClusterSecretPath(4321).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // Rewritten atomically: a reader sees the old secret or the new one.
  ASSERT_TRUE(WriteLocalClusterSecret(4321, "fedcba9876543210fedcba9876543210").ok());
  EXPECT_EQ(*ReadLocalClusterSecret(4321), "fedcba9876543210fedcba9876543210");
}

TEST_F(LocalSecretTest, AFileOrFolderOpenToOthersIsNoSecret) {
  ASSERT_TRUE(WriteLocalClusterSecret(7, "0123456789abcdef0123456789abcdef").ok());
  ASSERT_EQ(chmod(LocalClusterSecretPath(7).c_str(), 0644), 0);
  absl::StatusOr<std::string> file = ReadLocalClusterSecret(7);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(file.status().message().find("open to other users"), std::string::npos);
  ASSERT_EQ(chmod(LocalClusterSecretPath(7).c_str(), 0600), 0);
  ASSERT_EQ(chmod((root_ + "/ringattn").c_str(), 0755), 0);
  EXPECT_EQ(ReadLocalClusterSecret(7).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(WriteLocalClusterSecret(7, "0123456789abcdef0123456789abcdef").code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(LocalSecretTest, AMissingRuntimeFolderFallsBackToTmp) {
  setenv("XDG_RUNTIME_DIR", (root_ + "/gone").c_str(), 1);
  EXPECT_EQ(LocalClusterSecretPath(5),
            absl::StrCat("/tmp/ringattn-", getuid(), "/cluster-5.secret"));
}

TEST_F(LocalSecretTest, ATooShortFileHoldsNoSecret) {
  ASSERT_TRUE(WriteLocalClusterSecret(9, "short").ok());
  EXPECT_EQ(ReadLocalClusterSecret(9).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace ringattn::wire
