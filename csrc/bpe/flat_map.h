// Open-addressing hash maps for the encoder's two hot look-ups, built once and then read-only
// (so any number of threads may read them). Linear probing over a power-of-two table at most half
// full; one 16-byte slot per probe, so a hit usually costs a single cache line.
#pragma once
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace pyllmops::bpe {

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 32;
  x *= 0xD6E8FEB86659FD93ull;
  x ^= x >> 32;
  return x;
}

// First min(len, 8) bytes of p as a little-endian integer, zero-padded, without reading past p+len.
inline uint64_t load_head(const uint8_t* p, size_t len) {
  uint64_t v = 0;
  if (len >= 8) {
    std::memcpy(&v, p, 8);
  } else if (len >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + len - 4, 4);
    v = lo | (static_cast<uint64_t>(hi) << (8 * (len - 4)));
  } else if (len > 0) {
    v = p[0] | (static_cast<uint64_t>(p[len / 2]) << (8 * (len / 2))) | (static_cast<uint64_t>(p[len - 1]) << (8 * (len - 1)));
  }
  return v;
}

inline size_t table_capacity(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  return cap;
}

// Byte string -> token id. Keys live in the caller's blob (the encoder's token table); a slot keeps
// the first 8 bytes and the length, so keys of up to 8 bytes compare without touching the blob.
class BytesMap {
 public:
  static constexpr uint32_t kNone = 0xFFFFFFFFu;

  // Reserve for n keys before inserting.
  void reserve(size_t n) {
    slots_.assign(table_capacity(n), Slot{0, kNone, 0});
    mask_ = slots_.size() - 1;
  }

  // key must stay valid (it points into the owner's blob) for the map's lifetime. Returns false
  // if the key was already present (the first id wins).
  bool insert(const uint8_t* key, uint32_t len, uint32_t id) {
    const uint64_t head = load_head(key, len);
    for (size_t i = hash(key, len, head) & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.id == kNone) {
        s = Slot{head, id, len};
        keys_.resize(std::max<size_t>(keys_.size(), id + 1), nullptr);
        keys_[id] = key;
        return true;
      }
      if (s.len == len && s.head == head && (len <= 8 || std::memcmp(keys_[s.id] + 8, key + 8, len - 8) == 0))
        return false;
    }
  }

  uint32_t find(const uint8_t* key, size_t len) const {
    const uint64_t head = load_head(key, len);
    return find_hashed(key, len, head, hash(key, len, head));
  }

  // find() with head = load_head(key, len) and h = hash(key, len, head) computed by the caller.
  uint32_t find_hashed(const uint8_t* key, size_t len, uint64_t head, uint64_t h) const {
    if (slots_.empty()) return kNone;
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.id == kNone) return kNone;
      if (s.len == len && s.head == head && (len <= 8 || std::memcmp(keys_[s.id] + 8, key + 8, len - 8) == 0))
        return s.id;
    }
  }

  static uint64_t hash(const uint8_t* key, size_t len, uint64_t head) {
    uint64_t h = head ^ (len * 0x9E3779B97F4A7C15ull);
    for (size_t k = 8; k < len; k += 8) {
      h = mix64(h) + load_head(key + k, std::min<size_t>(8, len - k));
    }
    return mix64(h);
  }

 private:
  struct Slot {
    uint64_t head;
    uint32_t id;
    uint32_t len;
  };

  std::vector<Slot> slots_;
  std::vector<const uint8_t*> keys_;  // by id, for the bytes past the first 8
  size_t mask_ = 0;
};

// Pair of token ids -> (merge rank, id of the merged token).
class PairMap {
 public:
  struct Value {
    uint32_t rank;
    uint32_t id;
  };
  static constexpr uint64_t kEmpty = ~0ull;

  void reserve(size_t n) {
    slots_.assign(table_capacity(n), Slot{kEmpty, {0, 0}});
    mask_ = slots_.size() - 1;
  }

  static uint64_t key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

  // A pair already present keeps the lower rank, or takes v when overwrite is set.
  void insert(uint32_t a, uint32_t b, Value v, bool overwrite = false) {
    const uint64_t k = key(a, b);
    for (size_t i = mix64(k) & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.key == kEmpty) {
        s = Slot{k, v};
        ++size_;
        return;
      }
      if (s.key == k) {
        if (overwrite || v.rank < s.value.rank) s.value = v;
        return;
      }
    }
  }

  // Rank kNoRank when the pair does not merge.
  static constexpr uint32_t kNoRank = 0xFFFFFFFFu;
  Value find(uint32_t a, uint32_t b) const {
    const uint64_t k = key(a, b);
    for (size_t i = mix64(k) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == k) return s.value;
      if (s.key == kEmpty) return Value{kNoRank, 0};
    }
  }

  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t key;
    Value value;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace pyllmops::bpe
