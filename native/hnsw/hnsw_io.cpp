// HnswIndex file format: the body inside the envelope of common/format.h (kind 2).
//
// Body (little-endian):
//   u32  m                    links per node on levels >= 1 (2m on level 0)
//   u32  ef_construction
//   u32  ef_search
//   u64  seed                 of the level hash
//   u32  n_slots              slots ever handed out (live and free)
//   u32  entry_slot           0xFFFFFFFF when the index is empty
//   u32  entry_level
//   u8   quantizer            1 if fitted (l2, cosine with data), else 0
//   if quantizer == 1:
//     f32 lo[dim], f32 hi[dim]      the fitted range per dimension
//   n_slots times:
//     u8   state              0 free, 1 live
//     if live:
//       u32  label
//       u8   level            0..15
//       for l in 0..level:    u32 count (<= 2m on level 0, <= m above), u32 links[count] (slots)
//       f32  vector[dim]      as added (envelope format 1 stored cosine vectors normalized; such
//                             a file loads, and get_vectors returns the normalized vectors it holds)
// Codes (and cosine's inverse norms) are not stored: they are recomputed from the vectors and the
// range on load, which gives the same bytes. A reader refuses any count, slot, level, label or state out of range, a link
// to a free slot or to a node without that level, a repeated label, or trailing bytes, with
// DATA_LOSS, before the index is handed out.
#include <cmath>

#include "common/assert.h"
#include "common/limits.h"
#include "hnsw/hnsw_index.h"
#include "hnsw/hnsw_walk.h"

namespace qv {

Status HnswIndex::serialize(Bytes* out) const {
  {
    std::lock_guard<std::mutex> w(write_mu_);
    const uint32_t n = n_slots_.load();
    const bool quant = use_codes() && sq_.trained();
    // The exact size first (a pass over the counts), so the bytes are written once (Bytes).
    size_t body = 4 + 4 + 4 + 8 + 4 + 4 + 4 + 1 + (quant ? 8 * size_t{dim_} : 0);
    for (uint32_t s = 0; s < n; ++s) {
      const Meta& mt = meta(s);
      body += 1;
      if (mt.state.load() != kLive) continue;
      body += 4 + 1 + 4 * size_t{dim_};
      for (int l = 0; l <= mt.level; ++l) body += 4 + 4 * size_t{links(s, l)[0]};
    }
    begin_envelope(out, IndexKind::Hnsw, dim_, metric_, body);
    Writer wr(out);
    wr.u32(p_.m);
    wr.u32(p_.ef_construction);
    wr.u32(p_.ef_search);
    wr.u64(p_.seed);
    wr.u32(n);
    const uint64_t e = entry_packed();
    wr.u32(entry_slot(e));
    wr.u32(static_cast<uint32_t>(entry_level(e)));
    if (quant) {
      wr.u8(1);
      wr.array(sq_.lo().data(), dim_);
      wr.array(sq_.hi().data(), dim_);
    } else {
      wr.u8(0);
    }
    for (uint32_t s = 0; s < n; ++s) {
      const Meta& mt = meta(s);
      if (mt.state.load() != kLive) {
        wr.u8(0);
        continue;
      }
      wr.u8(1);
      wr.u32(mt.label.load(std::memory_order_relaxed));
      wr.u8(mt.level);
      for (int l = 0; l <= mt.level; ++l) {
        const uint32_t* ll = links(s, l);
        wr.u32(ll[0]);
        wr.array(ll + 1, ll[0]);
      }
      wr.array(vec(s), dim_);
    }
    QV_ASSERT(out->size() == kEnvelopeHeader + body);
  }
  finish_envelope(out);
  return Status::ok();
}

Status HnswIndex::deserialize(const EnvelopeInfo& info, std::unique_ptr<Index>* out) {
  Reader rd(info.body, info.body_len);
  uint32_t m = 0, efc = 0, efs = 0, n = 0, entry = 0, entry_level = 0;
  uint64_t seed = 0;
  uint8_t quant = 0;
  rd.u32(&m);
  rd.u32(&efc);
  rd.u32(&efs);
  rd.u64(&seed);
  rd.u32(&n);
  rd.u32(&entry);
  rd.u32(&entry_level);
  rd.u8(&quant);
  QV_RETURN_IF_ERROR(rd.status("hnsw header"));
  if (m < 2 || m > kMMax || efc < 1 || efc > kEfMax || efs < 1 || efs > kEfMax)
    return data_loss("hnsw index file has parameters out of range");
  if (n == kNone || static_cast<uint64_t>(n) > info.body_len)  // every slot takes at least a byte
    return data_loss("hnsw index file has a bad slot count");
  Params p;
  p.m = m;
  p.ef_construction = efc;
  p.ef_search = efs;
  p.seed = seed;
  std::unique_ptr<HnswIndex> ix(new HnswIndex(info.dim, info.metric, p));
  const uint32_t dim = info.dim;
  if (quant > 1 || (quant == 1 && !ix->use_codes())) return data_loss("hnsw index file has a bad quantizer flag");
  if (quant == 1) {
    std::vector<float> lo, hi;
    rd.array(&lo, dim);
    rd.array(&hi, dim);
    QV_RETURN_IF_ERROR(rd.status("hnsw quantizer"));
    if (!ix->sq_.restore(std::move(lo), std::move(hi))) return data_loss("hnsw index file has a bad quantizer range");
  }
  // Storage is allocated as slots are read, so a short file cannot make us allocate for a
  // large slot count it does not hold.
  ix->n_slots_.store(n);
  size_t live = 0;
  bool lossless = true;
  std::vector<float> buf(dim);
  for (uint32_t s = 0; s < n; ++s) {
    uint8_t state = 0;
    if (!rd.u8(&state)) break;
    ix->ensure_slots(s + 1);
    if (state == 0) {
      ix->free_.push_back(s);
      continue;
    }
    if (state != 1) return data_loss("hnsw index file has a bad slot state");
    uint32_t label = 0;
    uint8_t level = 0;
    rd.u32(&label);
    rd.u8(&level);
    if (!rd.ok()) break;
    if (label == kLabelNone || level > kLevelMax) return data_loss("hnsw index file has a bad label or level");
    if (!ix->slot_of_.emplace(label, s).second) return data_loss("hnsw index file repeats a label");
    ix->init_slot(s, label, level, ix->upper_for(s, level));
    for (int l = 0; l <= level; ++l) {
      uint32_t c = 0;
      if (!rd.u32(&c)) break;
      if (c > ix->max_links(l)) return data_loss("hnsw index file has a link list too long");
      uint32_t* ll = ix->links(s, l);
      for (uint32_t j = 0; j < c; ++j) {
        if (!rd.u32(ll + 1 + j)) break;
        if (ll[1 + j] >= n) return data_loss("hnsw index file links to a slot out of range");
      }
      ll[0] = c;
    }
    if (!rd.bytes(ix->vec(s), dim * sizeof(float))) break;
    const float* v = ix->vec(s);
    for (uint32_t d = 0; d < dim; ++d)
      if (!std::isfinite(v[d])) return data_loss("hnsw index file has a non-finite vector value");
    if (info.metric == Metric::Cosine) ix->inv_norm(s) = inv_norm_f32(v, dim);
    if (quant == 1) lossless = ix->sq_.encode(ix->coded_vector(s, buf.data()), ix->code(s)) && lossless;
    ix->meta(s).state.store(kLive);
    ++live;
  }
  QV_RETURN_IF_ERROR(rd.status("hnsw nodes"));
  if (rd.remaining() != 0) return data_loss("hnsw index file has trailing bytes");
  if (live > 0 && quant == 0 && ix->use_codes()) return data_loss("hnsw index file lacks its quantizer");
  // Every link must name a live node that has the level of the list.
  for (uint32_t s = 0; s < n; ++s) {
    if (ix->meta(s).state.load() != kLive) continue;
    for (int l = 0; l <= ix->meta(s).level; ++l) {
      const uint32_t* ll = ix->links(s, l);
      for (uint32_t j = 0; j < ll[0]; ++j) {
        const uint32_t t = ll[1 + j];
        if (ix->meta(t).state.load() != kLive || ix->meta(t).level < l)
          return data_loss("hnsw index file links to a free slot or a missing level");
      }
    }
  }
  if (live == 0) {
    if (entry != kNone) return data_loss("hnsw index file has an entry point but no nodes");
  } else if (entry >= n || ix->meta(entry).state.load() != kLive || ix->meta(entry).level != entry_level) {
    return data_loss("hnsw index file has a bad entry point");
  }
  ix->set_entry(entry, live == 0 ? 0 : static_cast<int>(entry_level));
  std::sort(ix->free_.begin(), ix->free_.end(), std::greater<uint32_t>());
  ix->live_.store(live);
  ix->lossless_.store(lossless);
  *out = std::move(ix);
  return Status::ok();
}

}  // namespace qv
