# syntax=docker/dockerfile:1
# The ringattn service image: ringattn-coordinator, ringattn-worker and the
# ringattn CLI on the CUDA runtime, running as an unprivileged user.
#
#   docker build -t ringattn .
#   docker network create ringattn
#   docker run -d --network=ringattn --name=coordinator -p 50051:50051 -p 9464:9464 \
#       ringattn coordinator --cp=2
#   docker run -d --network=ringattn --gpus=1 ringattn worker --coordinator=coordinator:50051
#   docker run --rm --network=ringattn ringattn ringattn status --coordinator=coordinator:50051
#
# The build stage compiles with the CUDA toolkit; the runtime stage carries
# the binaries and the shared libraries they load, nothing else from it.

ARG CUDA_VERSION=12.6.2
ARG UBUNTU_VERSION=24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu 24.04 has the Debian 12 versions the project is tested with
# (absl 20220623, gRPC 1.51, protobuf 3.21); versions follow the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       cmake ninja-build g++ pkg-config \
       libabsl-dev libopenblas-dev libgloo-dev \
       libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc \
       prometheus-cpp-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake --preset release -DRINGATTN_BUILD_TESTS=OFF -DRINGATTN_BUILD_BENCH=OFF \
    && cmake --build --preset release -j "$(nproc)" \
       --target ringattn_coordinator_main ringattn_worker_main ringattn_cli \
    && deploy/docker/collect-runtime-libs.sh /opt/ringattn \
       build/release/bin/ringattn-coordinator build/release/bin/ringattn-worker \
       build/release/bin/ringattn

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS runtime
LABEL org.opencontainers.image.title="ringattn" \
      org.opencontainers.image.description="Sharded ring attention as a service: coordinator, worker and CLI"
COPY --from=build /opt/ringattn /opt/ringattn
COPY deploy/docker/entrypoint.sh /usr/local/bin/ringattn-entrypoint
COPY deploy/docker/healthcheck.sh /usr/local/bin/ringattn-healthcheck
ENV PATH=/opt/ringattn/bin:$PATH
# The smoke test at the end fails the build if a binary misses a library.
RUN echo /opt/ringattn/lib > /etc/ld.so.conf.d/ringattn.conf \
    && ldconfig \
    && groupadd --system --gid 10001 ringattn \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin ringattn \
    && ringattn-coordinator --version >/dev/null \
    && ringattn-worker --version >/dev/null \
    && ringattn --version >/dev/null
USER 10001:10001
WORKDIR /tmp
# gRPC: coordinator 50051, worker 50052; Prometheus /metrics: 9464, 9465.
EXPOSE 50051 50052 9464 9465
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/ringattn-healthcheck"]
ENTRYPOINT ["/usr/local/bin/ringattn-entrypoint"]
CMD ["help"]
