#include "server/common/request_metrics.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"

namespace ringattn::server {
namespace {

class CountingInterceptor final : public grpc::experimental::Interceptor {
 public:
  CountingInterceptor(ServiceMetrics& metrics, Plane plane, std::string method)
      : metrics_(metrics), plane_(plane), method_(std::move(method)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      metrics_.CountRequest(
          plane_, method_,
          absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())));
    }
    methods->Proceed();
  }

 private:
  ServiceMetrics& metrics_;
  const Plane plane_;
  const std::string method_;
};

class CountingFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CountingFactory(ServiceMetrics& metrics) : metrics_(metrics) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    // "/ringattn.attention.v1.AttentionService/Forward" -> "Forward".
    const std::string path = info->method() == nullptr ? "" : info->method();
    if (!absl::StartsWith(path, "/ringattn.")) return nullptr;
    // gRPC takes ownership of the interceptor and deletes it with the call.
    return std::make_unique<CountingInterceptor>(metrics_, PlaneOf(path),
                                                 path.substr(path.rfind('/') + 1))
        .release();
  }

 private:
  ServiceMetrics& metrics_;
};

}  // namespace

Plane PlaneOf(absl::string_view path) {
  // Workers re-register every few seconds, so the control service far
  // outnumbers the API; JoinRing is the coordinator building a ring.
  if (absl::StartsWith(path, "/ringattn.worker.v1.CoordinatorControl/") ||
      path == "/ringattn.worker.v1.WorkerService/JoinRing") {
    return Plane::kControl;
  }
  return Plane::kApi;
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RequestCounter(
    ServiceMetrics& metrics) {
  return std::make_unique<CountingFactory>(metrics);
}

}  // namespace ringattn::server
