// Byte-level BPE trainer: learns merges from text, producing tiktoken-style ranks (rank == id, the
// 256 single bytes first with rank == byte value) that Encoder::from_ranks loads.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "bpe/pretokenize.h"

namespace pyllmops::bpe {

// Pre-tokenizes `texts` with `split`, then merges until `n_tokens` mergeable tokens exist or no
// adjacent pair is left inside any piece. Each step merges the pair with the highest count over the
// corpus; ties go to the smaller (left rank, right rank). Pair counts are updated incrementally:
// a merge touches only the distinct pieces that contain its pair (an index from pair to pieces),
// and the best pair comes from a max-heap whose stale entries are refreshed when popped.
// Returns the token bytes in rank order. A merge whose bytes already are a token (reached through
// another split) reuses that token and adds no rank.
std::vector<std::string> train_bpe(const std::vector<std::string_view>& texts, size_t n_tokens, Split split);

}  // namespace pyllmops::bpe
