#include "table.h"

#include <sstream>

namespace shark {

const char* tier_name(int tier) {
  if (tier < 0 || tier >= kNumTiers) return "invalid";
  return shark_format::visit_tier(tier, [](auto t) { return shark_format::TierTraits<decltype(t)::value>::kName; });
}

static std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << '[';
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << ']';
  return o.str();
}

std::string validate_attrs(const TableAttrs& a) {
  std::ostringstream e;
  if (a.format_version < kOldestFormatVersion || a.format_version > kFormatVersion) {
    e << "format_version " << a.format_version << " is not supported (this library reads format_version "
      << kOldestFormatVersion << " to " << kFormatVersion << ")";
  } else if (a.num_rows < 1 || static_cast<uint64_t>(a.num_rows) > kMaxRows) {
    e << "num_rows " << a.num_rows << " is out of range (1 .. 2^40)";
  } else if (a.dim < 1 || a.dim > kMaxDim) {
    e << "dim " << a.dim << " is out of range (1 .. " << kMaxDim << ")";
  } else if (a.uniform_tier < kMixed || a.uniform_tier >= kNumTiers) {
    e << "uniform_tier " << a.uniform_tier << " is not a tier code (-1 for a mixed table, or 0.." << kNumTiers - 1 << ")";
  } else if (a.output_dtype != static_cast<int64_t>(OutType::kFloat32) &&
             a.output_dtype != static_cast<int64_t>(OutType::kFloat16)) {
    e << "output_dtype " << a.output_dtype << " is not supported (1 = float32 or 10 = float16)";
  } else if (a.format_version >= 3) {
    const int64_t g = a.scale_group_rows;
    if (g < 1 || g > (int64_t{1} << kMaxGroupShift) || (g & (g - 1)) != 0) {
      e << "scale_group_rows " << g << " is not a power of two in 1 .. 2^" << kMaxGroupShift
        << " (format_version 3 needs it)";
    }
  } else if (a.scale_group_rows != 0) {
    e << "scale_group_rows " << a.scale_group_rows << " is given, but format_version " << a.format_version
      << " has no scale groups (only format_version 3 does)";
  }
  return e.str();
}

TableView make_table_view(const TableAttrs& a) {
  TableView t;
  t.num_rows = static_cast<uint64_t>(a.num_rows);
  t.dim = static_cast<uint32_t>(a.dim);
  t.uniform_tier = static_cast<int>(a.uniform_tier);
  t.format_version = a.format_version;
  shark_format::fill_strides(t.dim, a.format_version, t.stride);
  if (a.format_version >= 3) {
    int shift = 0;
    while ((int64_t{1} << shift) < a.scale_group_rows) ++shift;
    t.group_shift = shift;
    t.group_bytes = shark_format::group_section_bytes(t.num_rows, shift);
  }
  return t;
}

std::string validate_table(const TableView& t, const TableShapes& s) {
  std::ostringstream e;
  const uint64_t R = t.num_rows;
  const uint64_t blocks = (R + kRowsPerBlock - 1) / kRowsPerBlock;
  if (s.payload.size() != 1) {
    e << "payload must be 1-D uint8, got shape " << shape_str(s.payload);
    return e.str();
  }
  // v2 allows an empty default_row ([0]) for a table without dropped rows (checked below).
  const bool empty_default = t.format_version >= 2 && s.default_row.size() == 1 && s.default_row[0] == 0;
  if (!empty_default && (s.default_row.size() != 1 || s.default_row[0] != static_cast<int64_t>(t.dim))) {
    e << "default_row must have shape [" << t.dim << "] (dim)" << (t.format_version >= 2 ? " or [0]" : "") << ", got "
      << shape_str(s.default_row);
    return e.str();
  }
  if (s.row_meta.size() != 2 || s.row_meta[1] != kMetaWords) {
    e << "row_meta must have shape [blocks, 4], got " << shape_str(s.row_meta);
    return e.str();
  }
  if (t.uniform()) {
    if (s.row_meta[0] != 0) {
      e << "row_meta must be empty ([0, 4]) for a uniform " << tier_name(t.uniform_tier) << " table, got "
        << shape_str(s.row_meta);
      return e.str();
    }
    if (empty_default && t.uniform_tier == kDropped) {
      e << "default_row is empty but every row of the table is dropped (dropped rows read default_row)";
      return e.str();
    }
    const uint64_t need = R * t.stride[t.uniform_tier] + t.group_bytes;
    if (t.payload_bytes != need) {
      e << "payload has " << t.payload_bytes << " bytes but a uniform " << tier_name(t.uniform_tier)
        << " table of " << R << " rows x " << t.dim << " dims needs " << need << " bytes";
      if (t.group_bytes) e << " (" << t.group_bytes << " of them scale groups)";
      return e.str();
    }
    return std::string();
  }
  if (static_cast<uint64_t>(s.row_meta[0]) != blocks) {
    e << "row_meta must have shape [" << blocks << ", 4] for a mixed table of " << R << " rows, got "
      << shape_str(s.row_meta);
    return e.str();
  }
  uint64_t expect = 0;  // offset the next block must start at
  uint64_t dropped = 0;
  for (uint64_t b = 0; b < blocks; ++b) {
    const uint64_t* m = t.meta + b * kMetaWords;
    const uint64_t p0 = m[1], p1 = m[2], p2 = m[3];
    if (m[0] != expect) {
      e << "row_meta block " << b << " (rows " << b * kRowsPerBlock << "..) has byte offset " << m[0]
        << " but the rows before it end at byte " << expect;
      return e.str();
    }
    const uint64_t rows_here = (b + 1 == blocks) ? R - b * kRowsPerBlock : kRowsPerBlock;
    const uint64_t valid = rows_here == 64 ? ~uint64_t{0} : ((uint64_t{1} << rows_here) - 1);
    if ((p0 | p1 | p2) & ~valid) {
      e << "row_meta block " << b << " has tier bits set for rows past num_rows " << R;
      return e.str();
    }
    const uint64_t bad = shark_format::invalid_rows(p0, p1, p2);
    if (bad) {
      unsigned j = 0;
      while (!((bad >> j) & 1u)) ++j;
      const unsigned code = static_cast<unsigned>(shark_format::tier_in_block(p0, p1, p2, j));
      e << "row " << b * kRowsPerBlock + j << " has invalid tier code " << code << " in row_meta";
      return e.str();
    }
    // Bytes of the block's rows (rows past R have code bits 0 and are masked out by `valid`).
    dropped += shark_format::dropped_in_block(p0, p1, p2, valid);
    expect += shark_format::block_bytes(p0, p1, p2, valid, t.stride);
  }
  if (t.payload_bytes != expect + t.group_bytes) {
    e << "payload has " << t.payload_bytes << " bytes but row_meta describes " << expect << " bytes of rows";
    if (t.group_bytes) e << " and the scale groups take " << t.group_bytes;
    return e.str();
  }
  if (empty_default && dropped) {
    e << "default_row is empty but " << dropped << " rows are dropped (dropped rows read default_row)";
    return e.str();
  }
  return std::string();
}

}  // namespace shark
