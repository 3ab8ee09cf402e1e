// Per-session settings of the kernels, from ONNX Runtime session config entries (see ort/register.cc and
// custom_ops/README.md). None of them can turn an error into data. No ORT header.
#pragma once

#include <cstdint>

namespace shark {

struct KernelConfig {
  bool generic_only = false;               // shark_export.cpu_isa=generic: the portable path (tests)
  uint64_t stream_bytes = uint64_t{8} << 20;  // shark_export.stream_bytes: gather outputs from this size stream
  bool huge_pages = true;                  // shark_export.huge_pages=0: no transparent-huge-page advice
  int cuda = 0;                            // shark_export.cuda: 0 auto, -1 never register, 1 always (tests)

  bool operator<(const KernelConfig& o) const {
    if (generic_only != o.generic_only) return generic_only < o.generic_only;
    if (stream_bytes != o.stream_bytes) return stream_bytes < o.stream_bytes;
    if (huge_pages != o.huge_pages) return huge_pages < o.huge_pages;
    return cuda < o.cuda;
  }
};

}  // namespace shark
