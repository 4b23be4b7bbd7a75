// Pre-tokenizer: splits UTF-8 text into the pieces the regexes of the known byte-level BPE
// encodings would match, without a regex engine. Each split is a hand-written scanner that follows
// its pattern's alternatives in order, with the backtracking the regex would do spelled out
// (comments quote the alternative). Exactness against tiktoken / HF tokenizers is tested on every
// code point in tests/tokenizer; the Unicode classes come from the generated unicode_class.h.
//
// Invalid UTF-8 (only reachable from the C++ API: Python str is always valid) is taken one byte at
// a time as a character of no class, so every byte ends up in exactly one piece.
#pragma once
#include <cstddef>
#include <cstdint>

#include "bpe/unicode_class.h"

namespace pyllmops::bpe {

// Which regex the split reproduces.
enum class Split : uint8_t {
  // gpt2 / r50k_base / p50k_base, and HF ByteLevel(use_regex=True):
  //   '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s
  kR50k,
  // cl100k_base (tiktoken >= 0.7):
  //   '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+
  //   |\s++$|\s*[\r\n]|\s+(?!\S)|\s
  kCl100k,
  // o200k_base: case-aware words with optional contraction suffixes, see next_o200k.
  kO200k,
  // HF Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)] (SmolLM2, "smollm"
  // in GGUF): every \p{N} character is a piece of its own; the text between is split by kR50k.
  kGpt2Digits,
  // Llama 3 (and tiktoken's cl100k pattern before 0.7): cl100k without the \s++$ alternative,
  //   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
  //   |\s*[\r\n]+|\s+(?!\S)|\s+
  // It differs from kCl100k only on a whitespace run that ends the text and holds a newline
  // followed by more whitespace: "\n  " at the end is "\n" + "  " here, one piece in cl100k.
  kLlama3,
  // No pre-tokenization: the whole text is one piece. pyllmops.tokenizer uses it under a regex
  // pre-tokenizer written in Python (a pattern none of the scanners above implements).
  kNone,
};

// Class bits of unicode_class.h.
enum : uint8_t {
  kLu = 1 << 0,  // Lu | Lt
  kLl = 1 << 1,  // Ll
  kLo = 1 << 2,  // Lm | Lo
  kM = 1 << 3,   // M
  kN = 1 << 4,   // N
  kWs = 1 << 5,  // White_Space (\s)
  kNl = 1 << 6,  // \r, \n
  kL = kLu | kLl | kLo,
  kUpperish = kLu | kLo | kM,  // o200k [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
  kLowerish = kLl | kLo | kM,  // o200k [\p{Ll}\p{Lm}\p{Lo}\p{M}]
};

struct Char {
  uint8_t cls;
  uint8_t len;  // bytes
};

namespace detail {

struct AsciiTable {
  uint8_t cls[128];
  constexpr AsciiTable() : cls() {
    for (int c = 0; c < 128; ++c) cls[c] = unicode::kClass[c];  // block 0 is row 0
  }
};
inline constexpr AsciiTable kAscii{};

// Strict UTF-8 decode of the character at p (at least one byte); invalid -> {0, 1}.
inline Char decode_multibyte(const uint8_t* p, size_t avail) {
  const uint8_t b0 = p[0];
  uint32_t cp;
  uint8_t len;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    cp = b0 & 0x0F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    cp = b0 & 0x07;
  } else {
    return {0, 1};
  }
  if (avail < len) return {0, 1};
  for (uint8_t k = 1; k < len; ++k) {
    if ((p[k] & 0xC0) != 0x80) return {0, 1};
    cp = (cp << 6) | (p[k] & 0x3F);
  }
  // Overlong forms, surrogates and values past U+10FFFF are invalid.
  if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
    return {0, 1};
  return {unicode::code_point_class(cp), len};
}

}  // namespace detail

// Scans one text (or one segment of it: the segment end acts as the end of text for `$` and
// lookaheads, as when tiktoken runs its regex on the text between two special tokens).
class Scanner {
 public:
  Scanner(const uint8_t* s, size_t n) : s_(s), n_(n) {}

  // End of the piece that starts at i < n, for the given split (kGpt2Digits is handled by
  // for_each_piece, which calls next_r50k on the digit-free stretches).
  size_t next(Split split, size_t i) const {
    switch (split) {
      case Split::kCl100k: return next_cl100k(i, false);
      case Split::kLlama3: return next_cl100k(i, true);
      case Split::kO200k: return next_o200k(i);
      default: return next_r50k(i);
    }
  }

  Char at(size_t i) const {
    const uint8_t b = s_[i];
    if (b < 0x80) return {detail::kAscii.cls[b], 1};
    return detail::decode_multibyte(s_ + i, n_ - i);
  }

  size_t next_r50k(size_t i) const {
    if (s_[i] == '\'') {
      const size_t k = contraction_r50k(i);
      if (k) return k;
    }
    Char c = at(i);
    size_t j = i;
    // " ?" before the letter / number / other runs: a space followed by such a run joins it.
    if (s_[i] == ' ' && i + 1 < n_) {
      const Char c1 = at(i + 1);
      if (c1.cls & (kL | kN) || is_other(c1.cls)) {
        j = i + 1;
        c = c1;
      }
    }
    if (c.cls & kL) return run(j + c.len, kL);
    if (c.cls & kN) return run(j + c.len, kN);
    if (is_other(c.cls)) return run_other(j + c.len);
    // \s++$ | \s+(?!\S) | \s
    size_t last_start, last_nl_end;
    const size_t e = run_ws(i, &last_start, &last_nl_end);
    if (e == n_) return e;
    return last_start > i ? last_start : e;
  }

  // legacy: the Llama 3 form (no \s++$, so a trailing run still splits after its last newline).
  size_t next_cl100k(size_t i, bool legacy) const {
    if (s_[i] == '\'') {
      const size_t k = contraction_ci(i);
      if (k) return k;
    }
    const Char c = at(i);
    // [^\r\n\p{L}\p{N}]?+\p{L}++
    if (c.cls & kL) return run(i + c.len, kL);
    if (!(c.cls & (kL | kN | kNl)) && i + c.len < n_) {
      const Char c1 = at(i + c.len);
      if (c1.cls & kL) return run(i + c.len + c1.len, kL);
    }
    // \p{N}{1,3}+
    if (c.cls & kN) {
      size_t j = i + c.len;
      for (int k = 1; k < 3 && j < n_; ++k) {
        const Char d = at(j);
        if (!(d.cls & kN)) break;
        j += d.len;
      }
      return j;
    }
    // " ?[^\s\p{L}\p{N}]++[\r\n]*+"
    if (s_[i] == ' ' && i + 1 < n_) {
      const Char c1 = at(i + 1);
      if (is_other(c1.cls)) return run_newlines(run_other(i + 1 + c1.len));
    }
    if (is_other(c.cls)) return run_newlines(run_other(i + c.len));
    // \s++$ | \s*[\r\n] | \s+(?!\S) | \s
    size_t last_start, last_nl_end;
    const size_t e = run_ws(i, &last_start, &last_nl_end);
    if (e == n_ && !legacy) return e;
    if (last_nl_end) return last_nl_end;
    if (e == n_) return e;
    return last_start > i ? last_start : e;
  }

  // Alternatives, tried in order:
  //  A1 [^\r\n\p{L}\p{N}]?[Upperish]*[Lowerish]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
  //  A2 [^\r\n\p{L}\p{N}]?[Upperish]+[Lowerish]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
  //  A3 \p{N}{1,3}   A4 " ?[^\s\p{L}\p{N}]+[\r\n/]*"   A5 \s*[\r\n]+   A6 \s+(?!\S)   A7 \s+
  // The optional first character is tried taken, then not taken (a combining mark can be both
  // the prefix and the start of the word), before moving to the next alternative.
  size_t next_o200k(size_t i) const {
    const Char c = at(i);
    const bool prefix = !(c.cls & (kL | kN | kNl)) && i + c.len < n_;
    size_t e;
    if ((prefix && (e = word_a1(i + c.len))) || (e = word_a1(i)) || (prefix && (e = word_a2(i + c.len))) ||
        (e = word_a2(i))) {
      if (e < n_ && s_[e] == '\'') {
        const size_t k = contraction_ci(e);
        if (k) return k;
      }
      return e;
    }
    if (c.cls & kN) {
      size_t j = i + c.len;
      for (int k = 1; k < 3 && j < n_; ++k) {
        const Char d = at(j);
        if (!(d.cls & kN)) break;
        j += d.len;
      }
      return j;
    }
    if (s_[i] == ' ' && i + 1 < n_) {
      const Char c1 = at(i + 1);
      if (is_other(c1.cls)) return run_newlines_slash(run_other(i + 1 + c1.len));
    }
    if (is_other(c.cls)) return run_newlines_slash(run_other(i + c.len));
    size_t last_start, last_nl_end;
    const size_t e2 = run_ws(i, &last_start, &last_nl_end);
    if (last_nl_end) return last_nl_end;
    if (e2 == n_) return e2;
    return last_start > i ? last_start : e2;
  }

 private:
  static bool is_other(uint8_t cls) { return !(cls & (kL | kN | kWs)); }

  size_t run(size_t j, uint8_t mask) const {
    while (j < n_) {
      const uint8_t b = s_[j];
      if (b < 0x80) {
        if (!(detail::kAscii.cls[b] & mask)) break;
        ++j;
        continue;
      }
      const Char d = detail::decode_multibyte(s_ + j, n_ - j);
      if (!(d.cls & mask)) break;
      j += d.len;
    }
    return j;
  }

  size_t run_other(size_t j) const {
    while (j < n_) {
      const Char d = at(j);
      if (!is_other(d.cls)) break;
      j += d.len;
    }
    return j;
  }

  size_t run_newlines(size_t j) const {
    while (j < n_ && (s_[j] == '\r' || s_[j] == '\n')) ++j;
    return j;
  }

  size_t run_newlines_slash(size_t j) const {
    while (j < n_ && (s_[j] == '\r' || s_[j] == '\n' || s_[j] == '/')) ++j;
    return j;
  }

  // Whitespace run from i (s_[i] is whitespace). Returns its end; *last_start = start of its last
  // character; *last_nl_end = end of its last \r or \n (0 if none).
  size_t run_ws(size_t i, size_t* last_start, size_t* last_nl_end) const {
    size_t j = i, ls = i, nl = 0;
    while (j < n_) {
      const Char d = at(j);
      if (!(d.cls & kWs)) break;
      if (d.cls & kNl) nl = j + d.len;
      ls = j;
      j += d.len;
    }
    *last_start = ls;
    *last_nl_end = nl;
    return j;
  }

  // '(?:[sdmt]|ll|ve|re) at i (s_[i] == '\''), case-sensitive; end or 0.
  size_t contraction_r50k(size_t i) const {
    if (i + 1 >= n_) return 0;
    const uint8_t a = s_[i + 1];
    if (a == 's' || a == 'd' || a == 'm' || a == 't') return i + 2;
    if (i + 2 >= n_) return 0;
    const uint8_t b = s_[i + 2];
    if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e')) return i + 3;
    return 0;
  }

  // Case-insensitive contraction at i (s_[i] == '\''): '(?i:[sdmt]|ll|ve|re) (cl100k) and
  // (?i:'s|'t|'re|'ve|'m|'ll|'d) (o200k) accept the same strings. Unicode simple case folding
  // also maps U+017F LATIN SMALL LETTER LONG S (C5 BF) to s.
  size_t contraction_ci(size_t i) const {
    if (i + 1 >= n_) return 0;
    const uint8_t a0 = s_[i + 1];
    if (s_[i + 1] == 0xC5 && i + 2 < n_ && s_[i + 2] == 0xBF) return i + 3;
    if (!is_ascii_alpha(a0)) return 0;
    const uint8_t a = a0 | 0x20;
    if (a == 's' || a == 'd' || a == 'm' || a == 't') return i + 2;
    if (i + 2 >= n_ || !is_ascii_alpha(s_[i + 2])) return 0;
    const uint8_t b = s_[i + 2] | 0x20;
    if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e')) return i + 3;
    return 0;
  }

  static bool is_ascii_alpha(uint8_t c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }

  // A1 from s: [Upperish]*[Lowerish]+ with the regex's backtracking: the greedy Upperish run
  // ends at e1; if the next character is Ll the Lowerish run continues from there, else the
  // match gives back characters down to the last Lowerish one inside the run. 0 if no match.
  size_t word_a1(size_t s) const {
    size_t j = s, last_lower_end = 0;
    while (j < n_) {
      const Char d = at(j);
      if (!(d.cls & kUpperish)) {
        if (d.cls & kLl) return run(j + d.len, kLowerish);
        break;
      }
      j += d.len;
      if (d.cls & kLowerish) last_lower_end = j;
    }
    return last_lower_end;
  }

  // A2 from s: [Upperish]+[Lowerish]*. 0 if no match.
  size_t word_a2(size_t s) const {
    const size_t e = run(s, kUpperish);
    if (e == s) return 0;
    return run(e, kLowerish);
  }

  const uint8_t* s_;
  size_t n_;
};

// Calls fn(begin, end) for each piece of s[0, n) in order; the pieces tile the text.
template <class Fn>
inline void for_each_piece(Split split, const uint8_t* s, size_t n, Fn&& fn) {
  if (split == Split::kNone) {
    if (n) fn(size_t{0}, n);
    return;
  }
  if (split == Split::kGpt2Digits) {
    // Digits first: each \p{N} character alone, the stretches between split by the GPT-2 regex
    // with the stretch end as end of text.
    const Scanner whole(s, n);
    size_t i = 0;
    while (i < n) {
      size_t j = i;
      while (j < n) {
        const Char d = whole.at(j);
        if (d.cls & kN) break;
        j += d.len;
      }
      const Scanner part(s, j);
      for (size_t k = i; k < j;) {
        const size_t e = part.next_r50k(k);
        fn(k, e);
        k = e;
      }
      if (j < n) {
        const size_t e = j + whole.at(j).len;
        fn(j, e);
        j = e;
      }
      i = j;
    }
    return;
  }
  const Scanner sc(s, n);
  for (size_t i = 0; i < n;) {
    const size_t e = sc.next(split, i);
    fn(i, e);
    i = e;
  }
}

}  // namespace pyllmops::bpe
