#include "coda/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "coda/checked.h"
#include "coda/json.h"

namespace coda::safetensors {

using nlohmann::json;

namespace {
// A header is two levels deep; anything deeper is not a safetensors header.
constexpr int kMaxJsonDepth = 4;
}  // namespace

Result<Header> ParseHeader(std::span<const uint8_t> bytes) {
  if (bytes.size() < 8)
    return Corrupt("file is " + std::to_string(bytes.size()) + " bytes, too short for a safetensors header");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[static_cast<size_t>(i)];
  if (n > kMaxHeaderBytes)
    return Corrupt("header length " + std::to_string(n) + " exceeds the 100 MB limit");
  if (n > bytes.size() - 8)
    return Corrupt("header length " + std::to_string(n) + " runs past the end of the file (" +
                   std::to_string(bytes.size()) + " bytes)");
  Header h;
  h.data_start = 8 + n;
  const uint64_t data_size = bytes.size() - h.data_start;
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), static_cast<size_t>(n));
  CODA_ASSIGN_OR_RETURN(json j, ParseJson(text, "header", kMaxJsonDepth));
  if (!j.is_object()) return Corrupt("header is not a JSON object");

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return Corrupt("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) return Corrupt("__metadata__ value '" + m.key() + "' is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!v.is_object()) return Corrupt(where + ": entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) return Corrupt(where + ": missing or non-string 'dtype'");
    if (sh == v.end() || !sh->is_array()) return Corrupt(where + ": missing or non-array 'shape'");
    if (off == v.end() || !off->is_array() || off->size() != 2)
      return Corrupt(where + ": 'data_offsets' must be an array of two integers");
    TensorInfo t;
    t.name = name;
    const auto dtype = DTypeFromSafetensors(dt->get<std::string>());
    if (!dtype) return Unsupported(where + ": unknown dtype '" + dt->get<std::string>() + "'");
    t.dtype = *dtype;
    if (sh->size() > kMaxRank)
      return Corrupt(where + ": rank " + std::to_string(sh->size()) + " exceeds " + std::to_string(kMaxRank));
    for (const json& d : *sh) {
      CODA_ASSIGN_OR_RETURN(uint64_t dim, JsonToU64(d, where + ": shape entry"));
      t.shape.push_back(dim);
    }
    CODA_ASSIGN_OR_RETURN(t.begin, JsonToU64((*off)[0], where + ": data_offsets[0]"));
    CODA_ASSIGN_OR_RETURN(t.end, JsonToU64((*off)[1], where + ": data_offsets[1]"));
    if (t.begin > t.end) return Corrupt(where + ": data_offsets begin > end");
    if (t.end > data_size)
      return Corrupt(where + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                     ") run past the end of the data (" + std::to_string(data_size) +
                     " bytes): the file is truncated or its header is corrupt");
    const auto elems = CheckedElementCount(t.shape);
    const auto nbytes = elems ? CheckedMul(*elems, DTypeSize(t.dtype)) : std::nullopt;
    if (!nbytes) return Corrupt(where + ": shape overflows");
    if (*nbytes != t.size())
      return Corrupt(where + ": shape and dtype need " + std::to_string(*nbytes) + " bytes but data_offsets span " +
                     std::to_string(t.size()));
    h.tensors.push_back(std::move(t));
  }

  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expect = 0;
  for (const TensorInfo& t : h.tensors) {
    if (t.begin < expect) return Corrupt("tensor '" + t.name + "' overlaps the previous tensor");
    if (t.begin > expect)
      return Corrupt("gap in the data before tensor '" + t.name + "' (bytes " + std::to_string(expect) + " to " +
                     std::to_string(t.begin) + " are not covered)");
    expect = t.end;
  }
  if (expect != data_size)
    return Corrupt("data section is " + std::to_string(data_size) + " bytes but tensors cover " +
                   std::to_string(expect) + " (truncated or trailing bytes)");
  return h;
}

Result<File> File::Open(const std::string& path) {
  CODA_ASSIGN_OR_RETURN(MappedFile map, MappedFile::Open(path));
  auto header = ParseHeader(map.bytes());
  if (!header.ok()) return header.status().WithContext(path);
  File f;
  f.map_ = std::move(map);
  f.header_ = std::move(header).value();
  for (size_t i = 0; i < f.header_.tensors.size(); ++i) f.index_[f.header_.tensors[i].name] = i;
  return f;
}

const TensorInfo* File::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

std::span<const uint8_t> File::Data(const TensorInfo& t) const {
  return {map_.data() + header_.data_start + t.begin, static_cast<size_t>(t.size())};
}

namespace {
constexpr uint64_t kMaxIndexBytes = 64ull << 20;
constexpr size_t kMaxShards = 100000;

bool SafeShardName(const std::string& s) {
  return !s.empty() && s.find('/') == std::string::npos && s != "." && s != "..";
}
}  // namespace

Result<Checkpoint> Checkpoint::Open(const std::string& dir) {
  if (!IsDirectory(dir)) return NotFound(dir + ": not a directory");
  Checkpoint c;
  const std::string index_path = dir + "/model.safetensors.index.json";
  const std::string single_path = dir + "/model.safetensors";
  std::map<std::string, std::string> weight_map;  // tensor -> shard
  std::vector<std::string> shard_names;
  if (FileExists(index_path)) {
    CODA_ASSIGN_OR_RETURN(std::string text, ReadTextFile(index_path, kMaxIndexBytes));
    auto j = ParseJson(text, "model.safetensors.index.json");
    if (!j.ok()) return j.status().WithContext(index_path);
    auto wm = j->find("weight_map");
    if (!j->is_object() || wm == j->end() || !wm->is_object())
      return Corrupt(index_path + ": missing 'weight_map' object");
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) return Corrupt(index_path + ": weight_map['" + it.key() + "'] is not a string");
      const std::string shard = it.value().get<std::string>();
      if (!SafeShardName(shard)) return Corrupt(index_path + ": shard name '" + shard + "' is not a plain file name");
      weight_map[it.key()] = shard;
      if (std::find(shard_names.begin(), shard_names.end(), shard) == shard_names.end()) {
        if (shard_names.size() >= kMaxShards) return Corrupt(index_path + ": too many shards");
        shard_names.push_back(shard);
      }
    }
    if (weight_map.empty()) return Corrupt(index_path + ": 'weight_map' lists no tensors");
  } else if (FileExists(single_path)) {
    shard_names.push_back("model.safetensors");
  } else {
    return NotFound(dir + ": neither model.safetensors nor model.safetensors.index.json found");
  }

  std::map<std::string, const File*> by_shard;
  for (const std::string& shard : shard_names) {
    const std::string path = dir + "/" + shard;
    if (!FileExists(path))
      return NotFound(path + ": missing shard (listed in model.safetensors.index.json)");
    CODA_ASSIGN_OR_RETURN(File f, File::Open(path));
    c.files_.push_back(std::make_unique<File>(std::move(f)));
    by_shard[shard] = c.files_.back().get();
  }

  if (weight_map.empty()) {
    const File* f = c.files_.front().get();
    for (const TensorInfo& t : f->header().tensors) c.refs_[t.name] = Ref{f, &t};
  } else {
    for (const auto& [name, shard] : weight_map) {
      const File* f = by_shard[shard];
      const TensorInfo* t = f->Find(name);
      if (!t)
        return Corrupt(f->path() + ": tensor '" + name + "' listed in model.safetensors.index.json is not in this shard");
      c.refs_[name] = Ref{f, t};
    }
    for (const auto& f : c.files_)
      for (const TensorInfo& t : f->header().tensors)
        if (!c.refs_.count(t.name))
          return Corrupt(f->path() + ": tensor '" + t.name + "' is not listed in model.safetensors.index.json");
  }
  for (const auto& [name, ref] : c.refs_) c.names_.push_back(name);
  return c;
}

Checkpoint::Ref Checkpoint::Find(const std::string& name) const {
  auto it = refs_.find(name);
  return it == refs_.end() ? Ref{nullptr, nullptr} : it->second;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t n = 0;
  for (const auto& [name, ref] : refs_) n += ref.info->size();
  return n;
}

}  // namespace coda::safetensors
