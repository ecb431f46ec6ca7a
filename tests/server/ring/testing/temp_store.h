#ifndef RINGATTN_TESTS_SERVER_RING_TESTING_TEMP_STORE_H_
#define RINGATTN_TESTS_SERVER_RING_TESTING_TEMP_STORE_H_

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "server/ring/store.h"

namespace ringattn::ring::testing {

// A rendezvous store in a fresh temporary directory, removed with it.
class TempStore {
 public:
  TempStore() {
    std::string pattern = ::testing::TempDir() + "ringattn_store_XXXXXX";
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    store_ = std::make_unique<FileStore>(dir_);
  }
  ~TempStore() { std::filesystem::remove_all(dir_); }
  TempStore(const TempStore&) = delete;
  TempStore& operator=(const TempStore&) = delete;

  Store& store() { return *store_; }

 private:
  std::string dir_;
  std::unique_ptr<FileStore> store_;
};

}  // namespace ringattn::ring::testing

#endif  // RINGATTN_TESTS_SERVER_RING_TESTING_TEMP_STORE_H_
