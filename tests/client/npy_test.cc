#include "client/npy.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace ringattn::client {
namespace {

TEST(NpyTest, WriteThenReadRoundTrips) {
  const std::string path = ::testing::TempDir() + "ringattn_npy_test.npy";
  NpyArray a{"<f4", {2, 3, 5}, std::vector<std::byte>(2 * 3 * 5 * 4)};
  for (size_t i = 0; i < a.data.size(); ++i) a.data[i] = static_cast<std::byte>(i * 7);
  ASSERT_TRUE(WriteNpy(path, a).ok());
  absl::StatusOr<NpyArray> b = ReadNpy(path);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->descr, "<f4");
  EXPECT_EQ(b->shape, a.shape);
  EXPECT_EQ(b->data, a.data);
  // The data starts on a 64-byte boundary, as NumPy writes it.
  EXPECT_EQ((std::filesystem::file_size(path) - a.data.size()) % 64, 0u);
  std::filesystem::remove(path);
}

TEST(NpyTest, BadFilesAreErrors) {
  const std::string path = ::testing::TempDir() + "ringattn_npy_bad.npy";
  std::ofstream(path) << "not numpy";
  EXPECT_EQ(ReadNpy(path).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadNpy(path + ".missing").status().code(), absl::StatusCode::kNotFound);
  // Data shorter than the shape says.
  NpyArray a{"<f4", {4}, std::vector<std::byte>(16)};
  ASSERT_TRUE(WriteNpy(path, a).ok());
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 4);
  const absl::Status s = ReadNpy(path).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("need 16"), absl::string_view::npos) << s;
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace ringattn::client
