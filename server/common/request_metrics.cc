#include "server/common/request_metrics.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"

namespace ringattn::server {
namespace {

class CountingInterceptor final : public grpc::experimental::Interceptor {
 public:
  CountingInterceptor(ServiceMetrics& metrics, std::string method)
      : metrics_(metrics), method_(std::move(method)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      metrics_.CountRequest(
          method_, absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())));
    }
    methods->Proceed();
  }

 private:
  ServiceMetrics& metrics_;
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
    return std::make_unique<CountingInterceptor>(metrics_, path.substr(path.rfind('/') + 1))
        .release();
  }

 private:
  ServiceMetrics& metrics_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RequestCounter(
    ServiceMetrics& metrics) {
  return std::make_unique<CountingFactory>(metrics);
}

}  // namespace ringattn::server
