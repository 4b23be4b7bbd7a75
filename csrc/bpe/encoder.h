// Byte-level BPE encoder: pre-tokenize (pretokenize.h), then merge each piece's bytes.
//
// Two merge rules, one algorithm. Both repeatedly merge the adjacent pair of lowest rank, leftmost
// first, until no pair merges:
//  - ranks (tiktoken): a pair's rank is the rank of the concatenated bytes; token id == rank.
//  - merges (HF tokenizers, GGUF): a pair's rank is the index of (left, right) in the merges list;
//    the same bytes reached through another split may rank differently, or not merge at all.
// Both become one table, (left id, right id) -> (rank, merged id), so merging only does 64-bit
// integer look-ups. A piece that is itself a token is emitted directly when that is what merging
// would give (always in ranks mode, as tiktoken does; checked per token at construction in merges
// mode unless ignore_merges says so, as HF's option of that name).
//
// Pieces that needed merging are remembered in a small per-thread cache (words repeat: text is
// Zipfian), keyed by the encoder's serial number so encoders never see each other's entries.
//
// Merging is O(n^2) with tiny constants for short pieces (the usual case) and O(n log n) (binary
// heap over a linked list) past kSmallPiece bytes, so a 1 MB piece without spaces stays fast.
// An Encoder is immutable after construction: share one between threads freely.
#pragma once
#include <cstddef>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bpe/flat_map.h"
#include "bpe/pretokenize.h"
#include "bpe/worker_pool.h"

namespace pyllmops::bpe {

struct SpecialToken {
  std::string bytes;
  uint32_t id;
};

class Encoder {
 public:
  // tiktoken rule. tokens[i] has rank (== id) ranks[i]; every single byte must be a token.
  static std::shared_ptr<const Encoder> from_ranks(const std::vector<std::string>& tokens,
                                                   const std::vector<uint32_t>& ranks, Split split,
                                                   std::vector<SpecialToken> specials);
  // HF rule. tokens[id] are the token bytes (ids absent from the vocabulary: has[id] == false);
  // merges[r] = (left id, right id) of rank r; their concatenation must be a token. A byte with
  // no single-byte token is dropped from the input, as HF does when there is no unk token.
  static std::shared_ptr<const Encoder> from_merges(const std::vector<std::string>& tokens,
                                                    const std::vector<bool>& has,
                                                    const std::vector<std::pair<uint32_t, uint32_t>>& merges,
                                                    Split split, std::vector<SpecialToken> specials,
                                                    bool ignore_merges);

  // Appends the ids of s[0, n) to out, special tokens' text treated as ordinary text.
  void encode_ordinary(const uint8_t* s, size_t n, std::vector<uint32_t>& out) const;
  // BPE of one piece, without pre-tokenization (whole-token fast path, then merging).
  void encode_single_piece(const uint8_t* p, size_t n, std::vector<uint32_t>& out) const {
    if (n) encode_piece(p, n, out, nullptr);
  }
  // Same as encode_ordinary, but the specials whose index (order given at construction) has allowed[i] != 0 are
  // encoded as their id wherever their text occurs (leftmost first; longest at one position).
  void encode(const uint8_t* s, size_t n, const std::vector<char>& allowed, std::vector<uint32_t>& out) const;
  // Leftmost occurrence at or after `from` of a special with which[i] != 0: its index (longest
  // at one position) and *pos, or -1.
  long find_special(const uint8_t* s, size_t n, size_t from, const std::vector<char>& which, size_t* pos) const;

  // Concatenated bytes of ids; false (and *bad = index of the first invalid id) on an unknown id.
  bool decode(const uint32_t* ids, size_t n, std::string& out, size_t* bad) const;
  bool valid(uint32_t id) const { return id < valid_.size() && valid_[id]; }
  std::string_view token_bytes(uint32_t id) const {
    return {reinterpret_cast<const char*>(blob_.data()) + off_[id], off_[id + 1] - off_[id]};
  }
  // Largest id + 1 (ordinary and special tokens).
  uint32_t n_vocab() const { return static_cast<uint32_t>(valid_.size()); }
  const std::vector<SpecialToken>& specials() const { return specials_; }
  Split split() const { return split_; }

  static constexpr size_t kSmallPiece = 128;

 private:
  Encoder() = default;
  // Stores token bytes by id (ordinary and special) and the single-byte table.
  void init_tokens(const std::vector<std::string>& tokens, const std::vector<uint32_t>& ids,
                   std::vector<SpecialToken> specials, Split split);
  struct PieceCache;
  PieceCache* thread_cache() const;
  void encode_piece(const uint8_t* p, size_t len, std::vector<uint32_t>& out, PieceCache* cache) const;
  void merge_small(const uint8_t* p, size_t len, std::vector<uint32_t>& out) const;
  void merge_large(const uint8_t* p, size_t len, std::vector<uint32_t>& out) const;

  uint64_t serial_ = 0;         // unique per Encoder ever built: keys the per-thread piece cache
  Split split_ = Split::kCl100k;
  std::vector<uint8_t> blob_;   // token bytes, by id
  std::vector<uint32_t> off_;   // id -> [off_[id], off_[id+1]) in blob_
  std::vector<char> valid_;     // id -> is a token
  uint32_t byte_token_[256] = {};
  BytesMap whole_;              // pieces emitted as one token without merging
  PairMap pairs_;
  std::vector<SpecialToken> specials_;
  std::vector<uint32_t> special_by_len_;  // special indices, longest first
  bool special_first_[256] = {};
  int special_single_first_ = -1;  // the first byte when all specials share it (memchr path)
};

// The mergeable ranks of a .tiktoken file ("base64 rank" per line).
void parse_tiktoken(std::string_view text, std::vector<std::string>& tokens, std::vector<uint32_t>& ranks);

// Encodes a batch of texts on the calling thread and up to threads - 1 pool threads (worker_pool.h),
// at most one thread per usable CPU; each text wholly on one thread, texts handed out one at a time.
// A text in which a special with disallowed[i] != 0 occurs is not encoded: bad(t) is that
// special's index (else -1). The caller may take finished texts while others are still being
// encoded (the Python binding builds its lists meanwhile):
//   BatchEncode b(enc, texts, allowed, disallowed, threads);   // pool threads start here
//   b.work(k);                                  // encode here until at most k texts are unclaimed
//   for (size_t t; b.next_finished(&t);) use(b.ids(t), b.bad(t));   // never blocks
//   b.finish();                                 // the rest; rethrows an encoding error
// texts (and the bytes they view) must outlive the object.
class BatchEncode {
 public:
  BatchEncode(const Encoder& enc, const std::vector<std::string_view>& texts, std::vector<char> allowed,
              std::vector<char> disallowed, int threads);
  void work(size_t leave) { run_.work(leave); }
  bool next_finished(size_t* t) { return run_.next_finished(t); }
  void finish();
  int helpers() const { return helpers_; }
  const std::vector<uint32_t>& ids(size_t t) const { return out_[t]; }
  long bad(size_t t) const { return bad_[t]; }

 private:
  void encode_text(size_t t);

  const Encoder& enc_;
  const std::vector<std::string_view>& texts_;
  const std::vector<char> allowed_, disallowed_;
  const bool check_;  // any disallowed special
  const int helpers_;
  std::vector<std::vector<uint32_t>> out_;
  std::vector<long> bad_;
  std::exception_ptr error_;
  std::atomic<bool> failed_{false};
  ParallelItems run_;  // last: destroyed first, which waits for the pool threads using the above
};

}  // namespace pyllmops::bpe
