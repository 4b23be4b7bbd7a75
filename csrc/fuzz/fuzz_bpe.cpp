// libFuzzer target for the BPE core (built with ASan + UBSan, see scripts/fuzz_bpe.sh).
// Input: byte 0 picks the split and the checks, the rest is arbitrary bytes (invalid UTF-8 too).
// Checked properties (a violation aborts, which libFuzzer reports like a sanitizer error):
//  - the pieces tile the input: contiguous, non-empty, covering every byte;
//  - decode(encode(x)) == x for the ranks encoder and the merges encoder, with and without
//    special tokens, through the O(n^2) and the heap merge paths;
//  - a batch of pieces of the input, encoded on the worker pool (results collected while others are
//    still being encoded, as the Python binding does), gives each piece's own encoding;
//  - a vocabulary trained on the input loads and round-trips it.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bpe/encoder.h"
#include "bpe/trainer.h"

using namespace pyllmops::bpe;

namespace {

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_bpe: property violated: %s\n", what);
    std::abort();
  }
}

const char kSeedText[] =
    "The quick brown fox jumps over the lazy dog. Don't stop; it's 2024 and we'll see 12345 "
    "numbers\r\n\tin code: def f(x): return x ** 2  # comment\n\u00e9t\u00e9 \u4e2d\u6587 "
    "\xf0\x9f\x98\x80 HTTPServer camelCase ABC abc   \n\n   ";

constexpr int kSplits = 6;  // every Split: kR50k .. kNone

struct Fixture {
  std::vector<std::shared_ptr<const Encoder>> ranks, merges;  // one per split
  Fixture() {
    const std::vector<std::string_view> texts{kSeedText};
    for (int k = 0; k < kSplits; ++k) {
      const Split split = static_cast<Split>(k);
      const std::vector<std::string> tokens = train_bpe(texts, 400, split);
      std::vector<uint32_t> ids(tokens.size());
      for (uint32_t i = 0; i < ids.size(); ++i) ids[i] = i;
      const std::vector<SpecialToken> specials{{"<|endoftext|>", static_cast<uint32_t>(tokens.size())},
                                               {"<|end|>", static_cast<uint32_t>(tokens.size() + 1)}};
      ranks.push_back(Encoder::from_ranks(tokens, ids, split, specials));
      // The same vocabulary as an explicit merges list: each token's first split into two tokens
      // (by rank order), which exercises the merges rule on a different priority order.
      std::vector<std::pair<uint32_t, uint32_t>> merge_list;
      std::vector<bool> has(tokens.size(), true);
      for (uint32_t id = 256; id < tokens.size(); ++id) {
        const std::string& t = tokens[id];
        for (size_t cut = 1; cut < t.size(); ++cut) {
          uint32_t a = UINT32_MAX, b = UINT32_MAX;
          for (uint32_t j = 0; j < id; ++j) {
            if (tokens[j] == t.substr(0, cut)) a = j;
            if (tokens[j] == t.substr(cut)) b = j;
          }
          if (a != UINT32_MAX && b != UINT32_MAX) {
            merge_list.emplace_back(a, b);
            break;
          }
        }
      }
      merges.push_back(Encoder::from_merges(tokens, has, merge_list, split, specials, false));
    }
  }
};

void roundtrip(const Encoder& enc, const uint8_t* s, size_t n, bool specials) {
  std::vector<uint32_t> ids;
  if (specials) {
    enc.encode(s, n, std::vector<char>(enc.specials().size(), 1), ids);
  } else {
    enc.encode_ordinary(s, n, ids);
  }
  std::string back;
  size_t bad = 0;
  check(enc.decode(ids.data(), ids.size(), back, &bad), "encoded ids decode");
  check(back.size() == n && std::equal(back.begin(), back.end(), reinterpret_cast<const char*>(s)), "decode(encode(x)) == x");
  ids.clear();
  enc.encode_single_piece(s, n, ids);
  check(enc.decode(ids.data(), ids.size(), back, &bad), "piece ids decode");
  check(back.size() == n && std::equal(back.begin(), back.end(), reinterpret_cast<const char*>(s)), "piece round trip");
}

// The input cut into a few texts at arbitrary bytes; BatchEncode on 2 threads vs one encode each.
void batch_matches(const Encoder& enc, const uint8_t* s, size_t n, bool specials) {
  std::vector<std::string_view> texts;
  size_t at = 0;
  do {
    const size_t len = std::min(n - at, 1 + (n ? s[at] % 64 : 0) * (texts.size() + 1));
    texts.emplace_back(reinterpret_cast<const char*>(s) + at, len);
    at += len;
  } while (at < n);
  const std::vector<char> all(enc.specials().size(), specials ? 1 : 0), none(enc.specials().size(), 0);
  BatchEncode batch(enc, texts, all, none, 2);
  batch.work(texts.size() / 2);
  std::vector<char> seen(texts.size(), 0);
  size_t got = 0;
  const auto check_finished = [&] {
    for (size_t t; batch.next_finished(&t); ++got) {
      check(t < texts.size() && !seen[t], "each finished text is handed out once");
      seen[t] = 1;
      std::vector<uint32_t> want;
      enc.encode(reinterpret_cast<const uint8_t*>(texts[t].data()), texts[t].size(), all, want);
      check(batch.ids(t) == want && batch.bad(t) == -1, "batch ids == encode ids");
    }
  };
  check_finished();
  batch.finish();
  check_finished();
  check(got == texts.size(), "every text finishes");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Fixture fx;
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const uint8_t* s = data + 1;
  const size_t n = size - 1;
  // Bits 0-1 pick among the first four splits; with bit 7 set, bit 0 picks kLlama3 or kNone.
  const int k = (mode & 0x80) ? 4 + (mode & 1) : (mode & 3);
  const Split split = static_cast<Split>(k);

  size_t next = 0;
  for_each_piece(split, s, n, [&](size_t b, size_t e) {
    check(b == next && e > b && e <= n, "pieces tile the input");
    next = e;
  });
  check(next == n, "pieces cover the input");

  roundtrip(*fx.ranks[k], s, n, mode & 4);
  roundtrip(*fx.merges[k], s, n, mode & 8);
  batch_matches(*fx.ranks[k], s, n, mode & 4);

  if ((mode & 0x70) == 0x70 && n < 1024) {
    const std::vector<std::string> tokens = train_bpe({std::string_view(reinterpret_cast<const char*>(s), n)}, 256 + n % 64, split);
    std::vector<uint32_t> ids(tokens.size());
    for (uint32_t i = 0; i < ids.size(); ++i) ids[i] = i;
    roundtrip(*Encoder::from_ranks(tokens, ids, split, {}), s, n, false);
  }
  return 0;
}
