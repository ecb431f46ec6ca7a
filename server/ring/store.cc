#include "server/ring/store.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "absl/strings/str_cat.h"

namespace ringattn::ring {

FileStore::FileStore(std::string dir) : dir_(std::move(dir)) {}

std::string FileStore::PathOf(absl::string_view key) const {
  // Keys may hold '/' (prefixes); keep them flat in one directory. '%'
  // escapes itself too, so no two keys share a file.
  std::string name;
  for (char c : key) {
    if (c == '%') {
      name += "%25";
    } else if (c == '/') {
      name += "%2F";
    } else {
      name += c;
    }
  }
  return absl::StrCat(dir_, "/", name);
}

absl::Status FileStore::Set(absl::string_view key, const std::vector<char>& value) {
  const std::string path = PathOf(key);
  const std::string tmp =
      absl::StrCat(path, ".tmp.", std::hash<std::thread::id>()(std::this_thread::get_id()));
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(value.data(), static_cast<std::streamsize>(value.size()));
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot publish ", path, ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<char>> FileStore::Get(absl::string_view key) {
  std::ifstream in(PathOf(key), std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("store key '", key, "' is not set"));
  return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

absl::Status FileStore::Wait(const std::vector<std::string>& keys, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (const std::string& key : keys) {
    while (!std::filesystem::exists(PathOf(key))) {
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("store key '", key, "' not set within ", absl::FormatDuration(timeout)));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  return absl::OkStatus();
}

}  // namespace ringattn::ring
