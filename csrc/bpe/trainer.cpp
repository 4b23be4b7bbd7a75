#include "bpe/trainer.h"

#include <algorithm>
#include <cstdint>
#include <queue>
#include <stdexcept>
#include <unordered_map>

namespace pyllmops::bpe {

namespace {

struct Word {
  std::vector<uint32_t> syms;
  int64_t count;
};

uint64_t pair_key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

struct Candidate {
  int64_t count;
  uint64_t pair;
  // Max-heap on count, then the smaller pair first.
  bool operator<(const Candidate& o) const { return count != o.count ? count < o.count : pair > o.pair; }
};

}  // namespace

std::vector<std::string> train_bpe(const std::vector<std::string_view>& texts, size_t n_tokens, Split split) {
  if (n_tokens < 256) throw std::invalid_argument("a byte-level vocabulary needs at least 256 tokens");
  std::unordered_map<std::string_view, int64_t> piece_count;
  for (std::string_view t : texts) {
    const auto* s = reinterpret_cast<const uint8_t*>(t.data());
    for_each_piece(split, s, t.size(), [&](size_t b, size_t e) {
      if (e - b >= 2) ++piece_count[t.substr(b, e - b)];
    });
  }
  std::vector<Word> words;
  words.reserve(piece_count.size());
  for (const auto& [piece, count] : piece_count) {
    Word w{{}, count};
    w.syms.assign(reinterpret_cast<const uint8_t*>(piece.data()), reinterpret_cast<const uint8_t*>(piece.data()) + piece.size());
    words.push_back(std::move(w));
  }
  // unordered_map iteration order is not deterministic across builds: sort the words.
  std::sort(words.begin(), words.end(), [](const Word& a, const Word& b) { return a.syms < b.syms; });

  std::vector<std::string> tokens(256);
  for (int b = 0; b < 256; ++b) tokens[b] = std::string(1, static_cast<char>(b));
  std::unordered_map<std::string, uint32_t> token_id;
  for (uint32_t b = 0; b < 256; ++b) token_id.emplace(tokens[b], b);

  std::unordered_map<uint64_t, int64_t> count;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;  // pair -> words holding it (appended once per word)
  auto note_word = [&](uint64_t p, uint32_t wi) {
    auto& v = where[p];
    if (v.empty() || v.back() != wi) v.push_back(wi);
  };
  for (uint32_t wi = 0; wi < words.size(); ++wi) {
    const auto& s = words[wi].syms;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t p = pair_key(s[i], s[i + 1]);
      count[p] += words[wi].count;
      note_word(p, wi);
    }
  }
  std::priority_queue<Candidate> heap;
  for (const auto& [p, c] : count) heap.push({c, p});

  std::vector<uint32_t> stamp(words.size(), 0);
  uint32_t step = 0;
  std::vector<uint64_t> fresh;
  while (tokens.size() < n_tokens && !heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    auto it = count.find(top.pair);
    const int64_t now = it == count.end() ? 0 : it->second;
    if (now != top.count) {
      if (now > 0) heap.push({now, top.pair});
      continue;
    }
    if (now <= 0) break;
    const uint32_t a = static_cast<uint32_t>(top.pair >> 32), b = static_cast<uint32_t>(top.pair);
    std::string joined = tokens[a] + tokens[b];
    uint32_t id;
    if (auto found = token_id.find(joined); found != token_id.end()) {
      id = found->second;
    } else {
      id = static_cast<uint32_t>(tokens.size());
      token_id.emplace(joined, id);
      tokens.push_back(std::move(joined));
    }
    ++step;
    fresh.clear();
    const std::vector<uint32_t> holders = std::move(where[top.pair]);
    where.erase(top.pair);
    for (uint32_t wi : holders) {
      if (stamp[wi] == step) continue;
      stamp[wi] = step;
      Word& w = words[wi];
      auto& s = w.syms;
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) count[pair_key(s[i], s[i + 1])] -= w.count;
      size_t out = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          s[out++] = id;
          ++i;
        } else {
          s[out++] = s[i];
        }
      }
      s.resize(out);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t p = pair_key(s[i], s[i + 1]);
        count[p] += w.count;
        if (s[i] == id || s[i + 1] == id) {
          note_word(p, wi);
          fresh.push_back(p);
        }
      }
    }
    count.erase(top.pair);
    std::sort(fresh.begin(), fresh.end());
    fresh.erase(std::unique(fresh.begin(), fresh.end()), fresh.end());
    for (uint64_t p : fresh) heap.push({count[p], p});
  }
  return tokens;
}

}  // namespace pyllmops::bpe
