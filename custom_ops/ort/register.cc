// Library entry point: ORT calls RegisterCustomOps when a session registers this library.
// One domain (`shark_export`), created once per process and added to every session's options.
#include <mutex>
#include <string>

#include "ops.h"
#include "ort_utils.h"

#if defined(_WIN32)
#define SHARK_EXPORT_API __declspec(dllexport)
#else
#define SHARK_EXPORT_API __attribute__((visibility("default")))
#endif

namespace shark_ort {
namespace {

struct Registry {
  OrtCustomOpDomain* domain = nullptr;
  OpList ops;
  std::string error;
};

Registry* build_registry(uint32_t api_version) {
  auto* r = new Registry();  // lives for the process: sessions keep pointers to the ops
  OrtStatus* s = api().CreateCustomOpDomain(kDomain, &r->domain);
  if (s) {
    r->error = api().GetErrorMessage(s);
    api().ReleaseStatus(s);
    return r;
  }
  add_gather_cpu_ops(&r->ops, api_version);
  add_embedding_bag_cpu_ops(&r->ops, api_version);
#ifdef SHARK_WITH_CUDA
  if (cuda_ops_enabled()) {
    add_gather_cuda_ops(&r->ops, api_version);
    add_embedding_bag_cuda_ops(&r->ops, api_version);
  }
#endif
  for (auto& op : r->ops) {
    s = api().CustomOpDomain_Add(r->domain, op.get());
    if (s) {
      r->error = api().GetErrorMessage(s);
      api().ReleaseStatus(s);
      return r;
    }
  }
  return r;
}

}  // namespace
}  // namespace shark_ort

extern "C" SHARK_EXPORT_API OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                      const OrtApiBase* api_base) {
  using namespace shark_ort;
  if (!api_base) return nullptr;
  uint32_t version = ORT_API_VERSION;
  const OrtApi* a = api_base->GetApi(version);
  if (!a && ORT_API_VERSION > kMinApiVersion) {  // older runtime: everything we call exists since 1.17
    version = kMinApiVersion;
    a = api_base->GetApi(version);
  }
  if (!a) {
    const OrtApi* a1 = api_base->GetApi(1);
    const std::string msg = std::string("shark_export custom ops need ONNX Runtime >= 1.17, this runtime is ") +
                            api_base->GetVersionString();
    return a1 ? a1->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  Ort::InitApi(a);
  return guarded([&]() -> OrtStatus* {
    static std::once_flag once;
    static Registry* registry = nullptr;
    std::call_once(once, [&] { registry = build_registry(version); });
    if (!registry->error.empty()) {
      return make_status(ORT_FAIL, "shark_export: could not create the custom-op domain: " + registry->error);
    }
    return api().AddCustomOpDomain(options, registry->domain);
  });
}
