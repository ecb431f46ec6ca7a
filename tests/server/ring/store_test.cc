#include "server/ring/store.h"

#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace ringattn::ring {
namespace {

// A fresh directory per test, removed after it.
class FileStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "ringattn_store_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Names of the files in the directory (no subdirectories expected).
  std::vector<std::string> Files() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir_)) {
      EXPECT_TRUE(e.is_regular_file()) << e.path();
      names.push_back(e.path().filename().string());
    }
    return names;
  }

  std::string dir_;
};

std::vector<char> Bytes(const std::string& s) { return std::vector<char>(s.begin(), s.end()); }

TEST_F(FileStoreTest, SetThenGetReturnsTheSameBytes) {
  FileStore store(dir_);
  const std::vector<char> value = Bytes(std::string("a\0b\xff\n\r c", 9));
  ASSERT_TRUE(store.Set("rank0", value).ok());
  absl::StatusOr<std::vector<char>> got = store.Get("rank0");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, value);
}

TEST_F(FileStoreTest, EmptyValueIsSetAndReadBackEmpty) {
  FileStore store(dir_);
  ASSERT_TRUE(store.Set("empty", {}).ok());
  absl::StatusOr<std::vector<char>> got = store.Get("empty");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->empty());
  EXPECT_TRUE(store.Wait({"empty"}, absl::ZeroDuration()).ok()) << "an empty value is still set";
}

TEST_F(FileStoreTest, LargeValueRoundTrips) {
  FileStore store(dir_);
  std::vector<char> value(3 << 20);
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>(i * 7 % 256);
  ASSERT_TRUE(store.Set("big", value).ok());
  absl::StatusOr<std::vector<char>> got = store.Get("big");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, value);
}

TEST_F(FileStoreTest, AbsentKeyIsNotFoundNamingTheKey) {
  FileStore store(dir_);
  absl::StatusOr<std::vector<char>> got = store.Get("rank7");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
  EXPECT_NE(got.status().message().find("'rank7'"), absl::string_view::npos) << got.status();
}

TEST_F(FileStoreTest, SetAgainReplacesTheValue) {
  FileStore store(dir_);
  ASSERT_TRUE(store.Set("k", Bytes("first, longer value")).ok());
  ASSERT_TRUE(store.Set("k", Bytes("second")).ok());
  absl::StatusOr<std::vector<char>> got = store.Get("k");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Bytes("second")) << "no tail of the longer value is left";
}

TEST_F(FileStoreTest, NoTemporaryFileIsLeftBehind) {
  FileStore store(dir_);
  ASSERT_TRUE(store.Set("a", Bytes("1")).ok());
  ASSERT_TRUE(store.Set("a", Bytes("2")).ok());
  ASSERT_TRUE(store.Set("b", Bytes("3")).ok());
  std::vector<std::string> files = Files();
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"a", "b"}));
}

TEST_F(FileStoreTest, StoresInOneDirectorySeeEachOthersKeys) {
  FileStore rank0(dir_), rank1(dir_);
  ASSERT_TRUE(rank0.Set("addr/0", Bytes("127.0.0.1:1")).ok());
  ASSERT_TRUE(rank1.Wait({"addr/0"}, absl::Seconds(5)).ok());
  absl::StatusOr<std::vector<char>> got = rank1.Get("addr/0");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, Bytes("127.0.0.1:1"));
}

TEST_F(FileStoreTest, StoresInDifferentDirectoriesAreSeparate) {
  const std::string other = dir_ + "/other";
  ASSERT_TRUE(std::filesystem::create_directory(other));
  FileStore a(dir_), b(other);
  ASSERT_TRUE(a.Set("k", Bytes("a")).ok());
  EXPECT_EQ(b.Get("k").status().code(), absl::StatusCode::kNotFound);
}

// Gloo prefixes keys with "<prefix>/": they live flat in the one directory,
// and the same key under two prefixes (two ring generations) is two keys.
TEST_F(FileStoreTest, PrefixedKeysStayFlatAndDistinctPerPrefix) {
  FileStore store(dir_);
  ASSERT_TRUE(store.Set("ring-gen-1/rank_0", Bytes("gen1")).ok());
  ASSERT_TRUE(store.Set("ring-gen-2/rank_0", Bytes("gen2")).ok());
  ASSERT_TRUE(store.Set("a/b/c/d", Bytes("deep")).ok());
  EXPECT_EQ(*store.Get("ring-gen-1/rank_0"), Bytes("gen1"));
  EXPECT_EQ(*store.Get("ring-gen-2/rank_0"), Bytes("gen2"));
  EXPECT_EQ(*store.Get("a/b/c/d"), Bytes("deep"));
  EXPECT_EQ(store.Get("rank_0").status().code(), absl::StatusCode::kNotFound)
      << "a prefixed key is not the bare key";
  EXPECT_EQ(store.Get("ring-gen-3/rank_0").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Files().size(), 3u) << "one file per key, no subdirectories";
  EXPECT_TRUE(store.Wait({"ring-gen-1/rank_0", "a/b/c/d"}, absl::ZeroDuration()).ok());
}

// Mapping '/' to a flat name must not merge keys that differ: a key that
// already holds the replacement character is a different key.
TEST_F(FileStoreTest, KeyWithSlashAndKeyWithItsFlatSpellingAreDistinct) {
  FileStore store(dir_);
  ASSERT_TRUE(store.Set("a/b", Bytes("slash")).ok());
  EXPECT_EQ(store.Get("a%b").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(store.Wait({"a%b"}, absl::ZeroDuration()).ok());
  ASSERT_TRUE(store.Set("a%b", Bytes("percent")).ok());
  EXPECT_EQ(*store.Get("a/b"), Bytes("slash"));
  EXPECT_EQ(*store.Get("a%b"), Bytes("percent"));
}

TEST_F(FileStoreTest, SetIntoAMissingDirectoryIsUnavailable) {
  FileStore store(dir_ + "/no/such/dir");
  const absl::Status s = store.Set("k", Bytes("v"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_EQ(store.Get("k").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(FileStoreTest, WaitForKeysAlreadySetReturnsAtOnce) {
  FileStore store(dir_);
  ASSERT_TRUE(store.Set("a", Bytes("1")).ok());
  ASSERT_TRUE(store.Set("b", Bytes("2")).ok());
  const absl::Time start = absl::Now();
  EXPECT_TRUE(store.Wait({"a", "b"}, absl::Seconds(10)).ok());
  EXPECT_TRUE(store.Wait({"b", "a", "a"}, absl::ZeroDuration()).ok());
  EXPECT_TRUE(store.Wait({}, absl::ZeroDuration()).ok()) << "no keys: nothing to wait for";
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST_F(FileStoreTest, WaitForAnAbsentKeyTimesOutNamingItAfterTheTimeout) {
  FileStore store(dir_);
  ASSERT_TRUE(store.Set("present", Bytes("1")).ok());
  const absl::Duration timeout = absl::Milliseconds(200);
  const absl::Time start = absl::Now();
  const absl::Status s = store.Wait({"present", "missing"}, timeout);
  const absl::Duration waited = absl::Now() - start;
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("'missing'"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("200ms"), absl::string_view::npos) << s;
  EXPECT_GE(waited, timeout);
  EXPECT_LT(waited, timeout + absl::Seconds(3));
}

TEST_F(FileStoreTest, WaitWithZeroTimeoutOnAnAbsentKeyFailsAtOnce) {
  FileStore store(dir_);
  const absl::Time start = absl::Now();
  EXPECT_EQ(store.Wait({"missing"}, absl::ZeroDuration()).code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST_F(FileStoreTest, WaitReturnsOnceAnotherThreadSetsTheKeys) {
  FileStore store(dir_);
  std::thread setter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(store.Set("late/0", Bytes("x")).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_TRUE(store.Set("late/1", Bytes("y")).ok());
  });
  const absl::Time start = absl::Now();
  const absl::Status s = store.Wait({"late/0", "late/1"}, absl::Seconds(20));
  const absl::Duration waited = absl::Now() - start;
  setter.join();
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_GE(waited, absl::Milliseconds(140));
  EXPECT_LT(waited, absl::Seconds(10));
  EXPECT_EQ(*store.Get("late/1"), Bytes("y"));
}

// A rendezvous: every rank publishes its key and waits for all the others',
// each with its own store on the shared directory.
TEST_F(FileStoreTest, EightRanksRendezvousConcurrently) {
  constexpr int kRanks = 8;
  std::vector<std::string> keys;
  for (int r = 0; r < kRanks; ++r) keys.push_back(absl::StrCat("ring-gen-5/rank_", r));
  std::vector<absl::Status> waited(kRanks, absl::UnknownError("not run"));
  std::vector<int> good_values(kRanks, 0);
  std::vector<std::thread> ranks;
  for (int r = 0; r < kRanks; ++r) {
    ranks.emplace_back([&, r] {
      FileStore store(dir_);
      if (!store.Set(keys[r], Bytes(absl::StrCat("addr-of-", r))).ok()) return;
      waited[r] = store.Wait(keys, absl::Seconds(20));
      if (!waited[r].ok()) return;
      for (int peer = 0; peer < kRanks; ++peer) {
        absl::StatusOr<std::vector<char>> v = store.Get(keys[peer]);
        if (v.ok() && *v == Bytes(absl::StrCat("addr-of-", peer))) ++good_values[r];
      }
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < kRanks; ++r) {
    EXPECT_TRUE(waited[r].ok()) << "rank " << r << ": " << waited[r];
    EXPECT_EQ(good_values[r], kRanks) << "rank " << r;
  }
}

// Writers replace one key while readers read it: a reader sees one whole
// value or another, never a torn or partial one (publish is by rename).
TEST_F(FileStoreTest, ConcurrentSetsOfOneKeyAreSeenWhole) {
  constexpr int kWriters = 3;
  constexpr int kSetsPerWriter = 40;
  constexpr size_t kSize = 64 << 10;
  FileStore store(dir_);
  ASSERT_TRUE(store.Set("k", std::vector<char>(kSize, 'a')).ok());
  std::atomic<int> writers_left{kWriters};
  std::atomic<int> bad_sets{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      const std::vector<char> value(kSize, static_cast<char>('b' + w));
      for (int i = 0; i < kSetsPerWriter; ++i) {
        if (!store.Set("k", value).ok()) ++bad_sets;
      }
      --writers_left;
    });
  }
  int reads = 0, torn = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while ((writers_left > 0 || reads < 20) && reads < 100000 && absl::Now() < deadline) {
    absl::StatusOr<std::vector<char>> v = store.Get("k");
    ++reads;
    if (!v.ok() || v->size() != kSize ||
        std::count(v->begin(), v->end(), v->front()) != static_cast<long>(kSize)) {
      ++torn;
    }
  }
  for (auto& t : writers) t.join();
  EXPECT_EQ(bad_sets, 0);
  EXPECT_EQ(torn, 0) << "of " << reads << " reads";
  EXPECT_GE(reads, 20);
}

}  // namespace
}  // namespace ringattn::ring
