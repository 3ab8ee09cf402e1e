// The lookup loops for x86-64 with AVX2, FMA, F16C and POPCNT: gather_loops.h and bag_loops.h with
// Avx2Rows. CMake compiles this file, and only this one, with -mavx2 -mfma -mf16c -mpopcnt; its code
// runs only after cpu_isa() found those instructions. Every function it compiles has internal linkage
// or an Avx2Rows template argument, so none can replace a portable one at link time. No ORT header.
#include "bag_loops.h"
#include "gather_loops.h"
#include "rows_avx2.h"

namespace shark {
namespace avx2 {

TaskFn select_gather(int tier, IndexType it, OutType ot, bool stream) {
  return stream ? gather_task_for<Avx2Rows, true>(tier, it, ot) : gather_task_for<Avx2Rows, false>(tier, it, ot);
}

TaskFn select_bag(int tier, uint32_t dim, IndexType it, OutType ot, bool weighted) {
  return bag_task_for<Avx2Rows>(tier, dim, it, ot, weighted);
}

}  // namespace avx2
}  // namespace shark
