#include "tokenizer_bpe.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <utility>

#include "coda/text/unicode.h"

namespace coda::text::internal {
namespace {

constexpr uint32_t kNoRank = std::numeric_limits<uint32_t>::max();

struct ByteTables {
  std::array<char32_t, 256> to_cp{};
  std::array<int16_t, 324> to_byte{};  // the alphabet ends at U+0143
  ByteTables() {
    to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_cp[b] = printable ? static_cast<char32_t>(b) : next++;
      to_byte[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteTables& Tables() {
  static const ByteTables t;
  return t;
}

}  // namespace

char32_t ByteToUnicode(uint8_t b) { return Tables().to_cp[b]; }

int UnicodeToByte(char32_t cp) {
  if (cp >= Tables().to_byte.size()) return -1;
  return Tables().to_byte[cp];
}

std::string ByteLevelDecode(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    const int b = UnicodeToByte(DecodeUtf8(token, &pos));
    if (b < 0) return std::string(token);
    out.push_back(static_cast<char>(b));
  }
  return out;
}

void MergeMap::Reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap *= 2;
  if (cap <= slots_.size()) return;
  std::vector<Entry> old = std::move(slots_);
  slots_.assign(cap, Entry{kEmpty, 0, 0});
  mask_ = cap - 1;
  size_ = 0;
  for (const Entry& e : old) {
    if (e.key != kEmpty)
      Insert(static_cast<TokenId>(e.key >> 32), static_cast<TokenId>(e.key & 0xFFFFFFFFu), e.rank, e.merged);
  }
}

void MergeMap::Insert(TokenId left, TokenId right, uint32_t rank, TokenId merged) {
  if ((size_ + 1) * 2 > slots_.size()) Reserve(size_ + 1);
  const uint64_t key = Key(left, right);
  for (uint64_t i = Hash(key) & mask_;; i = (i + 1) & mask_) {
    Entry& e = slots_[i];
    if (e.key == key) {
      e.rank = rank;
      e.merged = merged;
      return;
    }
    if (e.key == kEmpty) {
      e = Entry{key, rank, merged};
      ++size_;
      return;
    }
  }
}

void BpeModel::Init(VocabMap vocab, const BpeOptions& options) {
  vocab_ = std::move(vocab);
  options_ = options;
  std::string buf;
  for (int b = 0; b < 256; ++b) {
    buf.clear();
    AppendUtf8(ByteToUnicode(static_cast<uint8_t>(b)), &buf);
    byte_ids_[b] = Find(buf).value_or(-1);
    char hex[8];
    std::snprintf(hex, sizeof(hex), "<0x%02X>", b);
    fallback_ids_[b] = Find(hex).value_or(-1);
  }
}

Status BpeModel::AddMerge(std::string_view left, std::string_view right, uint32_t rank) {
  const auto l = Find(left);
  const auto r = Find(right);
  if (!l || !r) {
    return Corrupt("model.merges[" + std::to_string(rank) + "]: token '" +
                   std::string(l ? right : left) + "' is not in model.vocab");
  }
  std::string joined;
  joined.reserve(left.size() + right.size());
  joined.append(left).append(right);
  const auto m = Find(joined);
  if (!m) {
    return Corrupt("model.merges[" + std::to_string(rank) + "]: merged token '" + joined +
                   "' is not in model.vocab");
  }
  merges_.Insert(*l, *r, rank, *m);
  return Status::Ok();
}

void BpeModel::InitialSymbols(std::string_view word, std::vector<TokenId>* syms) const {
  syms->clear();
  // Pending unknown symbol, flushed before the next known one (fuse_unk extends it).
  bool pending_unk = false;
  std::string mapped;
  auto add_unknown = [&](std::string_view ch) {
    if (options_.byte_fallback) {
      bool all = true;
      for (unsigned char b : ch) all = all && fallback_ids_[b] >= 0;
      if (all) {
        if (pending_unk) syms->push_back(*options_.unk_id), pending_unk = false;
        for (unsigned char b : ch) syms->push_back(fallback_ids_[b]);
        return;
      }
    }
    if (!options_.unk_id) return;  // no unk token: Hugging Face drops the character
    if (pending_unk && !options_.fuse_unk) syms->push_back(*options_.unk_id);
    pending_unk = true;
  };
  auto add_known = [&](TokenId id) {
    if (pending_unk) syms->push_back(*options_.unk_id), pending_unk = false;
    syms->push_back(id);
  };

  if (options_.byte_level) {
    for (unsigned char b : word) {
      if (byte_ids_[b] >= 0) {
        add_known(byte_ids_[b]);
      } else {
        mapped.clear();
        AppendUtf8(ByteToUnicode(b), &mapped);
        add_unknown(mapped);
      }
    }
  } else {
    for (size_t i = 0; i < word.size();) {
      const size_t len = std::min(Utf8CharLen(static_cast<unsigned char>(word[i])), word.size() - i);
      const std::string_view ch = word.substr(i, len);
      if (auto id = Find(ch)) {
        add_known(*id);
      } else {
        add_unknown(ch);
      }
      i += len;
    }
  }
  if (pending_unk) syms->push_back(*options_.unk_id);
}

// Quadratic but allocation-free merge loop for short words (the common case): keeps the
// rank of every adjacent pair and merges the lowest-ranked, leftmost first.
void BpeModel::MergeSmall(BpeScratch* scratch) const {
  auto& s = scratch->syms;
  auto& r = scratch->ranks;
  r.resize(s.size() - 1);
  auto rank_at = [&](size_t i) {
    const MergeMap::Entry* e = merges_.Find(s[i], s[i + 1]);
    return e ? e->rank : kNoRank;
  };
  for (size_t i = 0; i + 1 < s.size(); ++i) r[i] = rank_at(i);
  while (!r.empty()) {
    uint32_t best = kNoRank;
    size_t at = 0;
    for (size_t i = 0; i < r.size(); ++i) {
      if (r[i] < best) best = r[i], at = i;
    }
    if (best == kNoRank) break;
    s[at] = merges_.Find(s[at], s[at + 1])->merged;
    s.erase(s.begin() + static_cast<ptrdiff_t>(at) + 1);
    r.erase(r.begin() + static_cast<ptrdiff_t>(at));
    if (at > 0) r[at - 1] = rank_at(at - 1);
    if (at < r.size()) r[at] = rank_at(at);
  }
}

// Heap-driven merge loop for long words, O(n log n): the same lowest-rank, leftmost-first
// order as MergeSmall and Hugging Face's Word::merge_all.
void BpeModel::MergeLarge(BpeScratch* scratch) const {
  auto& s = scratch->syms;
  auto& nodes = scratch->nodes;
  auto& heap = scratch->heap;
  const int32_t n = static_cast<int32_t>(s.size());
  nodes.resize(s.size());
  for (int32_t i = 0; i < n; ++i) nodes[i] = {s[i], i - 1, i + 1 < n ? i + 1 : -1};
  heap.clear();
  // std heap functions build a max-heap; "less" here means lower priority.
  auto lower = [](const BpeScratch::Candidate& a, const BpeScratch::Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  auto push_pair = [&](int32_t pos) {
    if (pos < 0 || nodes[pos].next < 0) return;
    const MergeMap::Entry* e = merges_.Find(nodes[pos].id, nodes[nodes[pos].next].id);
    if (e == nullptr) return;
    heap.push_back({e->rank, pos, e->merged});
    std::push_heap(heap.begin(), heap.end(), lower);
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);
  constexpr TokenId kDead = -1;
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), lower);
    const BpeScratch::Candidate c = heap.back();
    heap.pop_back();
    BpeScratch::Node& left = nodes[c.pos];
    if (left.id == kDead || left.next < 0) continue;
    // Entries go stale when a neighbour merged first; a pair is identified by its result.
    const MergeMap::Entry* e = merges_.Find(left.id, nodes[left.next].id);
    if (e == nullptr || e->merged != c.merged) continue;
    const int32_t right = left.next;
    left.id = c.merged;
    left.next = nodes[right].next;
    if (left.next >= 0) nodes[left.next].prev = c.pos;
    nodes[right].id = kDead;
    push_pair(left.prev);
    push_pair(c.pos);
  }
  s.clear();
  for (int32_t i = 0; i >= 0; i = nodes[i].next) s.push_back(nodes[i].id);
}

void BpeModel::Tokenize(std::string_view word, BpeScratch* scratch, std::vector<TokenId>* out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    std::string_view whole = word;
    if (options_.byte_level) {
      scratch->mapped.clear();
      for (unsigned char b : word) AppendUtf8(ByteToUnicode(b), &scratch->mapped);
      whole = scratch->mapped;
    }
    if (auto id = Find(whole)) {
      out->push_back(*id);
      return;
    }
  }
  InitialSymbols(word, &scratch->syms);
  if (scratch->syms.size() > 1) {
    if (scratch->syms.size() <= 64) {
      MergeSmall(scratch);
    } else {
      MergeLarge(scratch);
    }
  }
  out->insert(out->end(), scratch->syms.begin(), scratch->syms.end());
}

}  // namespace coda::text::internal
