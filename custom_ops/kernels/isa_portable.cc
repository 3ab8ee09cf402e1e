// The lookup loops for any CPU: gather_loops.h and bag_loops.h with PortableRows. No ORT header.
#include "bag_loops.h"
#include "gather_loops.h"
#include "rows_portable.h"

namespace shark {
namespace portable {

TaskFn select_gather(int tier, IndexType it, OutType ot, bool /*stream: no non-temporal stores here*/) {
  return gather_task_for<PortableRows, false>(tier, it, ot);
}

TaskFn select_bag(int tier, uint32_t dim, IndexType it, OutType ot, bool weighted) {
  return bag_task_for<PortableRows>(tier, dim, it, ot, weighted);
}

}  // namespace portable
}  // namespace shark
