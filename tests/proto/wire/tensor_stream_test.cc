#include "proto/wire/tensor_stream.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace ringattn::wire {
namespace {

using attention::v1::TensorChunk;

// Bytes 0, 1, 2, ... (mod 251, so no run lines up with a power of two).
std::vector<std::byte> Pattern(size_t n, size_t seed = 0) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i + seed) % 251);
  return out;
}

std::string AsString(std::span<const std::byte> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

TensorChunk Piece(const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
                  uint64_t offset, std::string data) {
  TensorChunk c;
  c.set_name(name);
  c.set_dtype(dtype);
  for (int64_t d : shape) c.add_shape(d);
  c.set_offset(offset);
  c.set_data(std::move(data));
  return c;
}

void ExpectRefused(const absl::Status& s, absl::StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_NE(s.message().find(needle), absl::string_view::npos)
      << "'" << s.message() << "' does not name '" << needle << "'";
}

// Every piece an emitter was given, copied.
struct Recorder {
  std::vector<TensorChunk> pieces;
  int refuse_after = -1;  // Refuses the piece with this index (0-based); -1: none.

  bool operator()(TensorChunk& c) {
    pieces.push_back(c);
    return refuse_after < 0 || static_cast<int>(pieces.size()) <= refuse_after;
  }

  std::string Joined() const {
    std::string all;
    for (const TensorChunk& c : pieces) all += c.data();
    return all;
  }
};

// Every piece carries the tensor's name, dtype and whole shape, starts where
// the previous one ended, and all but the last are exactly kChunkBytes.
void ExpectWellFormed(const std::vector<TensorChunk>& pieces, const std::string& name,
                      const std::string& dtype, const std::vector<int64_t>& shape) {
  uint64_t offset = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const TensorChunk& c = pieces[i];
    EXPECT_EQ(c.name(), name) << "piece " << i;
    EXPECT_EQ(c.dtype(), dtype) << "piece " << i;
    EXPECT_EQ(std::vector<int64_t>(c.shape().begin(), c.shape().end()), shape) << "piece " << i;
    EXPECT_EQ(c.offset(), offset) << "piece " << i;
    if (i + 1 < pieces.size()) {
      EXPECT_EQ(c.data().size(), kChunkBytes) << "piece " << i;
    }
    EXPECT_LE(c.data().size(), kChunkBytes) << "piece " << i;
    offset += c.data().size();
  }
}

// --- WireDTypeSize ---------------------------------------------------------

TEST(WireDTypeSizeTest, KnownDTypesHaveTheirWidth) {
  EXPECT_EQ(WireDTypeSize("FP32"), 4u);
  EXPECT_EQ(WireDTypeSize("INT32"), 4u);
  EXPECT_EQ(WireDTypeSize("BF16"), 2u);
  EXPECT_EQ(WireDTypeSize("FP16"), 2u);
  EXPECT_EQ(WireDTypeSize("INT64"), 8u);
  EXPECT_EQ(WireDTypeSize("BOOL"), 1u);
}

TEST(WireDTypeSizeTest, UnknownMisspelledOrLowercaseDTypesAreZero) {
  for (const char* dtype :
       {"", "fp32", "Fp32", "FP64", "UINT8", "INT8", "FP8", "FP32 ", " FP32", "BFLOAT16", "bool"}) {
    EXPECT_EQ(WireDTypeSize(dtype), 0u) << "'" << dtype << "'";
  }
  EXPECT_EQ(WireDTypeSize(std::string("FP32\0", 5)), 0u) << "a trailing NUL";
}

// --- SplitTensor -----------------------------------------------------------

TEST(SplitTensorTest, EmptyTensorIsOneEmptyPiece) {
  Recorder r;
  SplitTensor("q", "FP32", {1, 0, 4}, {}, std::ref(r));
  ASSERT_EQ(r.pieces.size(), 1u);
  ExpectWellFormed(r.pieces, "q", "FP32", {1, 0, 4});
  EXPECT_TRUE(r.pieces[0].data().empty());
}

TEST(SplitTensorTest, SizesAroundThePieceLimitSplitExactly) {
  for (size_t n : {size_t{1}, size_t{7}, kChunkBytes - 1, kChunkBytes, kChunkBytes + 1,
                   2 * kChunkBytes, 2 * kChunkBytes + kChunkBytes / 2 + 3}) {
    SCOPED_TRACE(n);
    const std::vector<std::byte> data = Pattern(n, n);
    Recorder r;
    SplitTensor("k", "BF16", {static_cast<int64_t>(n)}, data, std::ref(r));
    ASSERT_EQ(r.pieces.size(), (n + kChunkBytes - 1) / kChunkBytes);
    ExpectWellFormed(r.pieces, "k", "BF16", {static_cast<int64_t>(n)});
    EXPECT_EQ(r.Joined(), AsString(data));
  }
}

TEST(SplitTensorTest, StopsAtTheFirstRefusedPiece) {
  const std::vector<std::byte> data = Pattern(3 * kChunkBytes + 10);
  Recorder r;
  r.refuse_after = 1;  // Refuses the second piece.
  SplitTensor("v", "FP32", {1}, data, std::ref(r));
  EXPECT_EQ(r.pieces.size(), 2u);
}

// --- PieceWriter -----------------------------------------------------------

TEST(PieceWriterTest, RunsOfOddSizesBecomeFullPiecesThenTheRest) {
  const std::vector<size_t> runs = {1, 3, kChunkBytes - 1, 7, kChunkBytes + 5, 0, 2};
  std::vector<std::byte> all;
  Recorder r;
  PieceWriter w("out", "FP16", {2, 3}, std::ref(r));
  for (size_t i = 0; i < runs.size(); ++i) {
    const std::vector<std::byte> run = Pattern(runs[i], i * 13);
    all.insert(all.end(), run.begin(), run.end());
    ASSERT_TRUE(w.Append(run));
  }
  ASSERT_TRUE(w.Finish());
  ASSERT_EQ(r.pieces.size(), (all.size() + kChunkBytes - 1) / kChunkBytes);
  ExpectWellFormed(r.pieces, "out", "FP16", {2, 3});
  EXPECT_EQ(r.Joined(), AsString(all));
}

TEST(PieceWriterTest, FinishWithNothingAppendedEmitsOneEmptyPiece) {
  Recorder r;
  PieceWriter w("lse", "FP32", {1, 1, 0}, std::ref(r));
  ASSERT_TRUE(w.Finish());
  ASSERT_EQ(r.pieces.size(), 1u);
  ExpectWellFormed(r.pieces, "lse", "FP32", {1, 1, 0});
  EXPECT_TRUE(r.pieces[0].data().empty());
}

TEST(PieceWriterTest, ExactMultipleOfThePieceSizeHasNoTrailingEmptyPiece) {
  Recorder r;
  PieceWriter w("q", "FP32", {1}, std::ref(r));
  ASSERT_TRUE(w.Append(Pattern(kChunkBytes)));
  ASSERT_TRUE(w.Append(Pattern(kChunkBytes, 1)));
  ASSERT_TRUE(w.Finish());
  EXPECT_EQ(r.pieces.size(), 2u);
  ExpectWellFormed(r.pieces, "q", "FP32", {1});
}

TEST(PieceWriterTest, MovedRunThatStartsAPieceAndFitsIsNotCopied) {
  std::vector<const char*> seen;
  PieceWriter w("q", "FP32", {4}, [&](TensorChunk& c) {
    seen.push_back(c.data().data());
    return true;
  });
  std::string run(kChunkBytes / 2 + 1, 'x');  // On the heap: its buffer has an address.
  const char* buffer = run.data();
  ASSERT_TRUE(w.Append(std::move(run)));
  ASSERT_TRUE(w.Finish());
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], buffer);
}

TEST(PieceWriterTest, MovedRunsMixedWithCopiedRunsKeepOrderAndSize) {
  Recorder r;
  PieceWriter w("x", "INT32", {9}, std::ref(r));
  std::string expected;
  auto moved = [&](size_t n, char c) {
    std::string s(n, c);
    expected += s;
    return w.Append(std::move(s));
  };
  auto copied = [&](size_t n, size_t seed) {
    const std::vector<std::byte> b = Pattern(n, seed);
    expected += AsString(b);
    return w.Append(b);
  };
  ASSERT_TRUE(moved(kChunkBytes, 'a'));          // Exactly one piece, taken whole.
  ASSERT_TRUE(copied(5, 1));                     // Starts a piece.
  ASSERT_TRUE(moved(100, 'b'));                  // Piece not empty: copied behind.
  ASSERT_TRUE(moved(2 * kChunkBytes + 1, 'c'));  // Larger than a piece: split.
  ASSERT_TRUE(copied(kChunkBytes - 106, 2));     // Fills the piece exactly.
  ASSERT_TRUE(moved(0, 'd'));
  ASSERT_TRUE(w.Finish());
  ExpectWellFormed(r.pieces, "x", "INT32", {9});
  EXPECT_EQ(r.Joined(), expected);
}

TEST(PieceWriterTest, RefusedPieceStopsEveryLaterCall) {
  Recorder r;
  r.refuse_after = 0;  // Refuses the first piece.
  PieceWriter w("q", "FP32", {1}, std::ref(r));
  EXPECT_FALSE(w.Append(Pattern(kChunkBytes + 3)));
  EXPECT_EQ(r.pieces.size(), 1u);
  EXPECT_FALSE(w.Append(Pattern(kChunkBytes)));
  EXPECT_FALSE(w.Append(std::string(10, 'z')));
  EXPECT_FALSE(w.Finish());
  EXPECT_EQ(r.pieces.size(), 1u) << "nothing is emitted after a refusal";
}

TEST(PieceWriterTest, KeepsACopyOfATemporaryEmitter) {
  int calls = 0;
  auto writer = std::make_unique<PieceWriter>("q", "FP32", std::vector<int64_t>{1},
                                              [&calls](TensorChunk&) { return ++calls > 0; });
  ASSERT_TRUE(writer->Append(Pattern(kChunkBytes + 1)));
  ASSERT_TRUE(writer->Finish());
  EXPECT_EQ(calls, 2);
}

// --- TensorAssembler: happy paths ------------------------------------------

struct DTypeCase {
  const char* dtype;
  size_t width;
};

class TensorAssemblerDTypeTest : public ::testing::TestWithParam<DTypeCase> {};

TEST_P(TensorAssemblerDTypeTest, PiecesOfOddSizesReassembleExactly) {
  const DTypeCase& p = GetParam();
  const std::vector<int64_t> shape = {3, 5, 7};
  const size_t bytes = 3 * 5 * 7 * p.width;
  const std::vector<std::byte> data = Pattern(bytes, p.width);
  TensorAssembler a(1 << 20);
  a.Expect("t", p.dtype, shape, /*required=*/true);
  // Pieces of 1, 2, 3, ... bytes: none a multiple of the element width.
  size_t at = 0;
  for (size_t n = 1; at < bytes; ++n) {
    const size_t len = std::min(n, bytes - at);
    ASSERT_TRUE(
        a.Add(Piece("t", p.dtype, shape, at, AsString(std::span(data).subspan(at, len)))).ok());
    at += len;
  }
  ASSERT_TRUE(a.Finish().ok());
  ASSERT_TRUE(a.Has("t"));
  EXPECT_EQ(a.Take("t"), data);
}

INSTANTIATE_TEST_SUITE_P(EveryDType, TensorAssemblerDTypeTest,
                         ::testing::Values(DTypeCase{"FP32", 4}, DTypeCase{"BF16", 2},
                                           DTypeCase{"FP16", 2}, DTypeCase{"INT32", 4},
                                           DTypeCase{"INT64", 8}, DTypeCase{"BOOL", 1}),
                         [](const auto& info) { return std::string(info.param.dtype); });

TEST(TensorAssemblerTest, SplitTensorOutputOfSeveralPiecesRoundTrips) {
  const int64_t elems = static_cast<int64_t>(2 * kChunkBytes / 4) + 1001;  // Three pieces.
  const std::vector<int64_t> shape = {1, 1, elems, 1};
  const std::vector<std::byte> data = Pattern(static_cast<size_t>(elems) * 4, 3);
  TensorAssembler a(uint64_t{1} << 30);
  a.Expect("q", "FP32", shape, true);
  int pieces = 0;
  absl::Status s;
  SplitTensor("q", "FP32", shape, data, [&](TensorChunk& c) {
    ++pieces;
    s = a.Add(c);
    return s.ok();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(pieces, 3);
  ASSERT_TRUE(a.Finish().ok());
  EXPECT_EQ(a.Take("q"), data);
}

TEST(TensorAssemblerTest, SeveralTensorsInterleavedEachReassemble) {
  const std::vector<std::byte> q = Pattern(40, 1), lse = Pattern(12, 2);
  TensorAssembler a(1 << 10);
  a.Expect("q", "FP32", {1, 10}, true);
  a.Expect("lse", "FP32", {3}, true);
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {1, 10}, 0, AsString(std::span(q).first(17)))).ok());
  ASSERT_TRUE(a.Add(Piece("lse", "FP32", {3}, 0, AsString(std::span(lse).first(5)))).ok());
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {1, 10}, 17, AsString(std::span(q).subspan(17)))).ok());
  ASSERT_TRUE(a.Add(Piece("lse", "FP32", {3}, 5, AsString(std::span(lse).subspan(5)))).ok());
  ASSERT_TRUE(a.Finish().ok());
  EXPECT_EQ(a.Take("q"), q);
  EXPECT_EQ(a.Take("lse"), lse);
}

TEST(TensorAssemblerTest, EmptyTensorOfOneEmptyPieceIsComplete) {
  TensorAssembler a(16);
  a.Expect("t", "FP32", {2, 0}, true);
  ASSERT_TRUE(a.Add(Piece("t", "FP32", {2, 0}, 0, "")).ok());
  ASSERT_TRUE(a.Finish().ok());
  EXPECT_TRUE(a.Has("t"));
  EXPECT_TRUE(a.Take("t").empty());
}

TEST(TensorAssemblerTest, ScalarOfEmptyShapeHoldsOneElement) {
  TensorAssembler a(16);
  a.Expect("s", "INT64", {}, true);
  EXPECT_FALSE(a.Add(Piece("s", "INT64", {}, 0, std::string(9, '\1'))).ok());
  ASSERT_TRUE(a.Add(Piece("s", "INT64", {}, 0, std::string(8, '\1'))).ok());
  EXPECT_TRUE(a.Finish().ok());
}

TEST(TensorAssemblerTest, UnkeptTensorIsCheckedAndCountedButNotCollected) {
  TensorAssembler a(100);
  a.Expect("q", "FP32", {20}, true, /*keep=*/false);
  a.Expect("k", "FP32", {10}, true);
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {20}, 0, std::string(80, 'q'))).ok());
  EXPECT_TRUE(a.Has("q"));
  EXPECT_TRUE(a.Take("q").empty()) << "an unkept tensor's bytes are not collected";
  // Its 80 bytes count against the limit: 40 more would pass 100.
  ExpectRefused(a.Add(Piece("k", "FP32", {10}, 0, std::string(40, 'k'))),
                absl::StatusCode::kResourceExhausted, "limit of 100");
  // And its pieces are still checked.
  ExpectRefused(a.Add(Piece("q", "FP32", {20}, 0, std::string(4, 'q'))),
                absl::StatusCode::kInvalidArgument, "out of order");
}

TEST(TensorAssemblerTest, OptionalTensorNeverSentIsFineAndAbsent) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {2}, true);
  a.Expect("doc_ids", "INT32", {2}, /*required=*/false);
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {2}, 0, std::string(8, 'q'))).ok());
  EXPECT_TRUE(a.Finish().ok());
  EXPECT_TRUE(a.Has("q"));
  EXPECT_FALSE(a.Has("doc_ids"));
  EXPECT_FALSE(a.Has("never_expected"));
}

TEST(TensorAssemblerTest, ReExpectingANameReplacesItsShapeAndDType) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {4}, true);
  a.Expect("q", "BF16", {2}, true);
  ExpectRefused(a.Add(Piece("q", "FP32", {4}, 0, std::string(16, 'q'))),
                absl::StatusCode::kInvalidArgument, "expected BF16");
  ASSERT_TRUE(a.Add(Piece("q", "BF16", {2}, 0, std::string(4, 'q'))).ok());
  EXPECT_TRUE(a.Finish().ok());
}

TEST(TensorAssemblerTest, TotalExactlyAtTheLimitIsAccepted) {
  TensorAssembler a(48);
  a.Expect("q", "FP32", {8}, true);
  a.Expect("k", "FP32", {4}, true);
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {8}, 0, std::string(32, 'q'))).ok());
  ASSERT_TRUE(a.Add(Piece("k", "FP32", {4}, 0, std::string(16, 'k'))).ok());
  EXPECT_TRUE(a.Finish().ok());
}

// --- TensorAssembler: refusals ---------------------------------------------

TEST(TensorAssemblerTest, UnexpectedNameIsRefused) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {2}, true);
  ExpectRefused(a.Add(Piece("Q", "FP32", {2}, 0, std::string(8, 'q'))),
                absl::StatusCode::kInvalidArgument, "unexpected tensor 'Q'");
  ExpectRefused(a.Add(Piece("", "FP32", {2}, 0, std::string(8, 'q'))),
                absl::StatusCode::kInvalidArgument, "unexpected tensor ''");
  EXPECT_FALSE(a.Has("Q"));
}

TEST(TensorAssemblerTest, DTypeOtherThanExpectedIsRefused) {
  for (const char* bad : {"BF16", "fp32", "", "FP64", "INT32", "FP32 "}) {
    SCOPED_TRACE(bad);
    TensorAssembler a(64);
    a.Expect("q", "FP32", {2}, true);
    ExpectRefused(a.Add(Piece("q", bad, {2}, 0, std::string(8, 'q'))),
                  absl::StatusCode::kInvalidArgument, "q.dtype is '" + std::string(bad) + "'");
    EXPECT_FALSE(a.Has("q")) << "a refused piece does not start the tensor";
  }
}

TEST(TensorAssemblerTest, DTypeThatChangesBetweenPiecesIsRefused) {
  TensorAssembler a(64);
  a.Expect("q", "FP16", {4}, true);
  ASSERT_TRUE(a.Add(Piece("q", "FP16", {4}, 0, std::string(4, 'q'))).ok());
  ExpectRefused(a.Add(Piece("q", "BF16", {4}, 4, std::string(4, 'q'))),
                absl::StatusCode::kInvalidArgument, "expected FP16");
}

TEST(TensorAssemblerTest, ShapeOtherThanExpectedIsRefused) {
  const std::vector<std::vector<int64_t>> bad = {{1, 2, 4, 3}, {1, 2, 3},     {1, 2, 3, 4, 1},
                                                 {},           {-1, 2, 3, 4}, {1, 2, 3, 5}};
  for (const std::vector<int64_t>& shape : bad) {
    TensorAssembler a(1 << 10);
    a.Expect("k", "FP32", {1, 2, 3, 4}, true);
    ExpectRefused(a.Add(Piece("k", "FP32", shape, 0, std::string(8, 'k'))),
                  absl::StatusCode::kInvalidArgument, "expected [1,2,3,4]");
  }
  TensorAssembler a(1 << 10);
  a.Expect("k", "FP32", {1, 2, 3, 4}, true);
  ExpectRefused(a.Add(Piece("k", "FP32", {1, 2, 4, 3}, 0, "")), absl::StatusCode::kInvalidArgument,
                "k.shape is [1,2,4,3]");
}

TEST(TensorAssemblerTest, ShapeThatChangesBetweenPiecesIsRefused) {
  TensorAssembler a(1 << 10);
  a.Expect("k", "FP32", {2, 4}, true);
  ASSERT_TRUE(a.Add(Piece("k", "FP32", {2, 4}, 0, std::string(16, 'k'))).ok());
  ExpectRefused(a.Add(Piece("k", "FP32", {4, 2}, 16, std::string(16, 'k'))),
                absl::StatusCode::kInvalidArgument, "k.shape is [4,2]");
}

TEST(TensorAssemblerTest, FirstPieceNotAtOffsetZeroIsOutOfOrder) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {4}, true);
  ExpectRefused(a.Add(Piece("q", "FP32", {4}, 8, std::string(8, 'q'))),
                absl::StatusCode::kInvalidArgument, "piece at byte 8 is out of order (expected 0)");
}

TEST(TensorAssemblerTest, GapBetweenPiecesIsOutOfOrder) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {4}, true);
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {4}, 0, std::string(4, 'q'))).ok());
  ExpectRefused(a.Add(Piece("q", "FP32", {4}, 5, std::string(4, 'q'))),
                absl::StatusCode::kInvalidArgument, "piece at byte 5 is out of order (expected 4)");
}

TEST(TensorAssemblerTest, OverlappingPieceIsOutOfOrder) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {4}, true);
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {4}, 0, std::string(8, 'q'))).ok());
  ExpectRefused(a.Add(Piece("q", "FP32", {4}, 6, std::string(4, 'q'))),
                absl::StatusCode::kInvalidArgument, "piece at byte 6 is out of order (expected 8)");
}

TEST(TensorAssemblerTest, DuplicatedPieceIsOutOfOrder) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {4}, true);
  const TensorChunk first = Piece("q", "FP32", {4}, 0, std::string(8, 'q'));
  ASSERT_TRUE(a.Add(first).ok());
  ExpectRefused(a.Add(first), absl::StatusCode::kInvalidArgument,
                "piece at byte 0 is out of order (expected 8)");
}

TEST(TensorAssemblerTest, WholeTensorSentTwiceIsRefused) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {2}, true);
  const TensorChunk whole = Piece("q", "FP32", {2}, 0, std::string(8, 'q'));
  ASSERT_TRUE(a.Add(whole).ok());
  ExpectRefused(a.Add(whole), absl::StatusCode::kInvalidArgument, "out of order");
  EXPECT_EQ(a.Take("q").size(), 8u);
}

TEST(TensorAssemblerTest, PieceRunningPastTheEndIsRefused) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {4}, true);
  ExpectRefused(a.Add(Piece("q", "FP32", {4}, 0, std::string(17, 'q'))),
                absl::StatusCode::kInvalidArgument, "q has more than the 16 bytes its shape holds");
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {4}, 0, std::string(12, 'q'))).ok());
  ExpectRefused(a.Add(Piece("q", "FP32", {4}, 12, std::string(5, 'q'))),
                absl::StatusCode::kInvalidArgument, "more than the 16 bytes");
}

TEST(TensorAssemblerTest, PieceWithDataAfterTheTensorIsCompleteIsRefused) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {4}, true);
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {4}, 0, std::string(16, 'q'))).ok());
  ExpectRefused(a.Add(Piece("q", "FP32", {4}, 16, std::string(1, 'q'))),
                absl::StatusCode::kInvalidArgument, "more than the 16 bytes");
}

TEST(TensorAssemblerTest, TotalOverTheLimitIsResourceExhaustedNamingTheTensor) {
  TensorAssembler a(40);
  a.Expect("q", "FP32", {8}, true);
  a.Expect("k", "FP32", {8}, true);
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {8}, 0, std::string(32, 'q'))).ok());
  ASSERT_TRUE(a.Add(Piece("k", "FP32", {8}, 0, std::string(8, 'k'))).ok());
  ExpectRefused(a.Add(Piece("k", "FP32", {8}, 8, std::string(1, 'k'))),
                absl::StatusCode::kResourceExhausted,
                "tensors of this call exceed the limit of 40 bytes at 'k'");
}

TEST(TensorAssemblerTest, SingleTensorLargerThanTheLimitIsResourceExhausted) {
  TensorAssembler a(1000);
  a.Expect("q", "FP32", {1000}, true);
  ExpectRefused(a.Add(Piece("q", "FP32", {1000}, 0, std::string(1001, 'q'))),
                absl::StatusCode::kResourceExhausted, "limit of 1000");
}

TEST(TensorAssemblerTest, NegativeDimHoldsNoBytes) {
  TensorAssembler a(1 << 10);
  a.Expect("q", "FP32", {-3, 4}, true);
  ExpectRefused(a.Add(Piece("q", "FP32", {-3, 4}, 0, std::string(4, 'q'))),
                absl::StatusCode::kInvalidArgument, "more than the 0 bytes");
  ExpectRefused(a.Add(Piece("q", "FP32", {3, 4}, 0, std::string(48, 'q'))),
                absl::StatusCode::kInvalidArgument, "expected [-3,4]");
}

TEST(TensorAssemblerTest, UnknownExpectedDTypeHoldsNoBytes) {
  TensorAssembler a(1 << 10);
  a.Expect("q", "FP64", {4}, true);
  ExpectRefused(a.Add(Piece("q", "FP64", {4}, 0, std::string(32, 'q'))),
                absl::StatusCode::kInvalidArgument, "more than the 0 bytes");
}

// Shapes whose byte count does not fit in 64 bits must never wrap around to
// a small size that a short tensor then completes.
TEST(TensorAssemblerTest, ShapeWhoseByteCountOverflowsIsNeverComplete) {
  const int64_t big = (int64_t{1} << 62) + 1;  // * 4 elements * 4 bytes = 2^66 + 16.
  const std::vector<std::vector<int64_t>> shapes = {
      {big, 4},
      {int64_t{1} << 32, int64_t{1} << 32, 1},  // 2^66 bytes: wraps to 0.
      {std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max()},
  };
  for (const std::vector<int64_t>& shape : shapes) {
    SCOPED_TRACE(::testing::PrintToString(shape));
    TensorAssembler a(1 << 20);
    a.Expect("q", "FP32", shape, true);
    for (size_t n : {size_t{0}, size_t{16}}) {
      const absl::Status added = a.Add(Piece("q", "FP32", shape, 0, std::string(n, 'q')));
      const absl::Status finished = added.ok() ? a.Finish() : added;
      EXPECT_FALSE(finished.ok()) << n << " bytes taken as the whole tensor";
    }
  }
}

// A kept tensor whose declared size passes the limit is refused when its
// bytes do, without memory sized by the declaration first.
TEST(TensorAssemblerTest, TensorDeclaredFarPastTheLimitIsRefusedWithoutSizingMemoryForIt) {
  const std::vector<int64_t> shape = {int64_t{1} << 61};  // 2 EiB of BOOL.
  TensorAssembler a(1 << 20);
  a.Expect("mask", "BOOL", shape, true);
  ASSERT_TRUE(a.Add(Piece("mask", "BOOL", shape, 0, std::string(1000, '\1'))).ok());
  ASSERT_TRUE(a.Add(Piece("mask", "BOOL", shape, 1000, std::string((1 << 20) - 1000, '\1'))).ok());
  ExpectRefused(a.Add(Piece("mask", "BOOL", shape, 1 << 20, "x")),
                absl::StatusCode::kResourceExhausted, "limit of 1048576");
  ExpectRefused(a.Finish(), absl::StatusCode::kInvalidArgument, "mask is incomplete");
}

TEST(TensorAssemblerTest, FinishRefusesAMissingRequiredTensor) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {2}, true);
  a.Expect("k", "FP32", {3}, true);
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {2}, 0, std::string(8, 'q'))).ok());
  ExpectRefused(a.Finish(), absl::StatusCode::kInvalidArgument, "k is incomplete: got 0 of 12");
}

TEST(TensorAssemblerTest, FinishRefusesAPartialRequiredTensor) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {4}, true);
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {4}, 0, std::string(15, 'q'))).ok());
  ExpectRefused(a.Finish(), absl::StatusCode::kInvalidArgument, "q is incomplete: got 15 of 16");
}

TEST(TensorAssemblerTest, FinishRefusesAPartialOptionalTensor) {
  TensorAssembler a(64);
  a.Expect("doc_ids", "INT32", {4}, /*required=*/false);
  ASSERT_TRUE(a.Add(Piece("doc_ids", "INT32", {4}, 0, std::string(4, 'd'))).ok());
  ExpectRefused(a.Finish(), absl::StatusCode::kInvalidArgument,
                "doc_ids is incomplete: got 4 of 16");
}

TEST(TensorAssemblerTest, FinishRefusesAnOptionalTensorStartedWithAnEmptyPiece) {
  TensorAssembler a(64);
  a.Expect("doc_ids", "INT32", {4}, /*required=*/false);
  ASSERT_TRUE(a.Add(Piece("doc_ids", "INT32", {4}, 0, "")).ok());
  ExpectRefused(a.Finish(), absl::StatusCode::kInvalidArgument,
                "doc_ids is incomplete: got 0 of 16");
}

TEST(TensorAssemblerTest, RefusedPieceLeavesTheTensorAsItWas) {
  TensorAssembler a(64);
  a.Expect("q", "FP32", {4}, true);
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {4}, 0, "abcd")).ok());
  EXPECT_FALSE(a.Add(Piece("q", "FP32", {4}, 4, std::string(13, 'x'))).ok());  // Past the end.
  EXPECT_FALSE(a.Add(Piece("q", "BF16", {4}, 4, "xxxx")).ok());                // Wrong dtype.
  ASSERT_TRUE(a.Add(Piece("q", "FP32", {4}, 4, "efghijklmnop")).ok());
  ASSERT_TRUE(a.Finish().ok());
  const std::vector<std::byte> got = a.Take("q");
  EXPECT_EQ(AsString(got), "abcdefghijklmnop");
}

// --- BytesAs ---------------------------------------------------------------

TEST(BytesAsTest, ReadsLittleEndianValuesAndDropsATrailingPartialElement) {
  const std::vector<float> values = {1.5f, -2.25f, 3.0e7f};
  std::vector<std::byte> bytes(values.size() * 4 + 3);
  std::memcpy(bytes.data(), values.data(), values.size() * 4);
  EXPECT_EQ(BytesAs<float>(bytes), values);
  EXPECT_TRUE(BytesAs<float>({}).empty());
}

}  // namespace
}  // namespace ringattn::wire
