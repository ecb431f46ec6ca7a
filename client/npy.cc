#include "client/npy.h"

#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ringattn::client {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

size_t ItemSize(const std::string& descr) {
  if (descr.size() < 3) return 0;
  int64_t n = 0;
  return absl::SimpleAtoi(descr.substr(2), &n) && n > 0 ? static_cast<size_t>(n) : 0;
}

// The value of 'key': in the header dict, up to the next top-level comma.
absl::StatusOr<std::string> Field(const std::string& header, const std::string& key) {
  const size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) return absl::InvalidArgumentError("npy header lacks " + key);
  size_t start = header.find(':', at);
  if (start == std::string::npos) return absl::InvalidArgumentError("bad npy header");
  ++start;
  int depth = 0;
  size_t end = start;
  for (; end < header.size(); ++end) {
    const char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if ((c == ',' || c == '}') && depth == 0) break;
  }
  return std::string(absl::StripAsciiWhitespace(header.substr(start, end - start)));
}

}  // namespace

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, 6) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a .npy file"));
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, at = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
    at = 10;
  } else if (bytes.size() >= 12) {
    for (int i = 0; i < 4; ++i) {
      header_len |= size_t{static_cast<unsigned char>(bytes[8 + i])} << (8 * i);
    }
    at = 12;
  }
  if (at == 0 || at + header_len > bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": bad .npy header"));
  }
  const std::string header(bytes.data() + at, header_len);
  NpyArray a;
  auto descr = Field(header, "descr");
  auto order = Field(header, "fortran_order");
  auto shape = Field(header, "shape");
  if (!descr.ok() || !order.ok() || !shape.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": incomplete .npy header"));
  }
  if (*order != "False") {
    return absl::InvalidArgumentError(absl::StrCat(path, ": Fortran order is not supported"));
  }
  a.descr = std::string(absl::StripSuffix(absl::StripPrefix(*descr, "'"), "'"));
  if (a.descr[0] == '>') {
    return absl::InvalidArgumentError(absl::StrCat(path, ": big-endian data is not supported"));
  }
  std::string dims(absl::StripSuffix(absl::StripPrefix(*shape, "("), ")"));
  int64_t count = 1;
  for (absl::string_view d : absl::StrSplit(dims, ',', absl::SkipWhitespace())) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(d), &n) || n < 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": bad shape ", *shape));
    }
    a.shape.push_back(n);
    count *= n;
  }
  const size_t item = ItemSize(a.descr);
  const size_t want = static_cast<size_t>(count) * item;
  if (item == 0 || bytes.size() - at - header_len != want) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", bytes.size() - at - header_len,
                                                   " data bytes, shape and dtype need ", want));
  }
  const auto* p = reinterpret_cast<const std::byte*>(bytes.data() + at + header_len);
  a.data.assign(p, p + want);
  return a;
}

absl::Status WriteNpy(const std::string& path, const NpyArray& a) {
  std::string shape = absl::StrJoin(a.shape, ", ");
  if (a.shape.size() == 1) shape += ",";
  std::string header =
      absl::StrCat("{'descr': '", a.descr, "', 'fortran_order': False, 'shape': (", shape, "), }");
  // Pad so that the data starts on a 64-byte boundary; the header ends in '\n'.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(kMagic, 6);
  const char version[2] = {1, 0};
  out.write(version, 2);
  const char len[2] = {static_cast<char>(header.size() & 0xff),
                       static_cast<char>(header.size() >> 8)};
  out.write(len, 2);
  out << header;
  out.write(reinterpret_cast<const char*>(a.data.data()),
            static_cast<std::streamsize>(a.data.size()));
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace ringattn::client
