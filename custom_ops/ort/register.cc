// Library entry point: ORT calls RegisterCustomOps when a session registers this library.
// One domain (`shark_export`) per distinct set of the library's session config entries (custom_ops/README.md),
// created once per process and added to the options of every session with those settings.
#include <cstdlib>
#include <map>
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

Registry* build_registry(uint32_t api_version, const shark::KernelConfig& config) {
  auto* r = new Registry();  // lives for the process: sessions keep pointers to the ops
  OrtStatus* s = api().CreateCustomOpDomain(kDomain, &r->domain);
  if (s) {
    r->error = api().GetErrorMessage(s);
    api().ReleaseStatus(s);
    return r;
  }
  add_gather_cpu_ops(&r->ops, api_version, config);
  add_embedding_bag_cpu_ops(&r->ops, api_version, config);
  add_multi_lookup_cpu_ops(&r->ops, api_version, config);
#ifdef SHARK_WITH_CUDA
  if (cuda_ops_enabled(config)) {
    add_gather_cuda_ops(&r->ops, api_version, config);
    add_embedding_bag_cuda_ops(&r->ops, api_version, config);
    add_multi_lookup_cuda_ops(&r->ops, api_version, config);
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

// The value of session config entry `key`, or "" when it is not set.
OrtStatus* config_entry(const OrtSessionOptions* options, const char* key, std::string* value) {
  value->clear();
  int has = 0;
  SHARK_RETURN_IF_STATUS(api().HasSessionConfigEntry(options, key, &has));
  if (!has) return nullptr;
  size_t size = 0;
  SHARK_RETURN_IF_STATUS(api().GetSessionConfigEntry(options, key, nullptr, &size));
  std::string buf(size, '\0');
  SHARK_RETURN_IF_STATUS(api().GetSessionConfigEntry(options, key, buf.data(), &size));
  value->assign(buf.c_str());
  return nullptr;
}

// The library's session config entries (custom_ops/README.md); an unknown value is an error naming it.
OrtStatus* read_config(const OrtSessionOptions* options, shark::KernelConfig* c) {
  std::string v;
  SHARK_RETURN_IF_STATUS(config_entry(options, "shark_export.cpu_isa", &v));
  if (v == "generic") {
    c->generic_only = true;
  } else if (!v.empty() && v != "auto") {
    return make_status(ORT_INVALID_ARGUMENT, "shark_export.cpu_isa must be 'auto' or 'generic', got '" + v + "'");
  }
  SHARK_RETURN_IF_STATUS(config_entry(options, "shark_export.stream_bytes", &v));
  if (!v.empty()) {
    char* end = nullptr;
    const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    if (!end || *end || v[0] == '-') {
      return make_status(ORT_INVALID_ARGUMENT, "shark_export.stream_bytes must be a byte count, got '" + v + "'");
    }
    c->stream_bytes = n;
  }
  SHARK_RETURN_IF_STATUS(config_entry(options, "shark_export.huge_pages", &v));
  if (v == "0" || v == "1") {
    c->huge_pages = v == "1";
  } else if (!v.empty()) {
    return make_status(ORT_INVALID_ARGUMENT, "shark_export.huge_pages must be '0' or '1', got '" + v + "'");
  }
  SHARK_RETURN_IF_STATUS(config_entry(options, "shark_export.cuda", &v));
  if (v == "0" || v == "force" || v == "auto" || v.empty()) {
    c->cuda = v == "0" ? -1 : v == "force" ? 1 : 0;
  } else {
    return make_status(ORT_INVALID_ARGUMENT, "shark_export.cuda must be 'auto', '0' or 'force', got '" + v + "'");
  }
  return nullptr;
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
    shark::KernelConfig config;
    SHARK_RETURN_IF_STATUS(read_config(options, &config));
    static std::mutex mu;
    static std::map<shark::KernelConfig, Registry*> registries;  // one domain per distinct setting
    Registry* registry = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu);
      Registry*& slot = registries[config];
      if (!slot) slot = build_registry(version, config);
      registry = slot;
    }
    if (!registry->error.empty()) {
      return make_status(ORT_FAIL, "shark_export: could not create the custom-op domain: " + registry->error);
    }
    return api().AddCustomOpDomain(options, registry->domain);
  });
}
