# loglet container image.
#
#   docker build -t loglet .          (or: podman build -t loglet .)
#
# Two stages: a Debian builder compiles the agent with CMake (Release, no
# tests run); the runtime image is debian:bookworm-slim with only the shared
# libraries the binary links, CA certificates, the binary and a default
# configuration. See deployments/docker/README.md.
#
# User: the image's default user is nobody (65534), so a plain
# `docker run` is unprivileged; /var/lib/loglet (positions) belongs to it.
# Reading a real node's logs needs root: /var/log/pods is root-owned (0750 or
# 0640 on many nodes). The Kubernetes manifests and the Helm chart therefore
# run it as uid 0 with every capability dropped except DAC_READ_SEARCH, no
# privilege escalation and a read-only root filesystem; locally, use
# `--user 0` against a real /var/log.

FROM debian:bookworm AS builder

# The build section of scripts/setup.sh, word for word (tests check that the two
# lists stay equal), plus libcmocka-dev: the CMake project configures its unit
# tests unconditionally and stops when cmocka is missing. Nothing is run from it.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      libyaml-dev libcurl4-openssl-dev zlib1g-dev libprotobuf-c-dev protobuf-c-compiler \
      libsnappy-dev libpcre2-dev libjansson-dev libssl-dev \
      libcmocka-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
# -Werror is for CI; a release image should not fail on a new compiler warning.
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DLOGLET_WERROR=OFF \
 && cmake --build /build --target loglet -j"$(nproc)" \
 && cmake --install /build --prefix /out --strip \
 && /out/bin/loglet -version

FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="loglet" \
      org.opencontainers.image.description="Kubernetes node logging agent: tails /var/log/containers/*.log and pushes to Grafana Loki (or prints to stdout)"

# Runtime libraries of the binary (libyaml, libcurl with OpenSSL, libcrypto for archive digests, zlib,
# protobuf-c, snappy, PCRE2) and the CA bundle for https:// Loki URLs.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libyaml-0-2 libcurl4 zlib1g libprotobuf-c1 libsnappy1v5 libpcre2-8-0 libjansson4 libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY --from=builder /out/bin/loglet /usr/bin/loglet

# The default configuration: tail the node's container logs, remember
# positions in /var/lib/loglet, print every line to stdout. Setting LOKI_URL
# (…/loki/api/v1/push) pushes to Loki instead.
RUN mkdir -p /etc/loglet /var/lib/loglet \
 && chown 65534:65534 /var/lib/loglet \
 && printf '%s\n' \
      '# loglet default configuration of the container image (every other key keeps' \
      '# its default: see `loglet -check-config -config /etc/loglet/loglet.yaml`).' \
      'server:' \
      '  http_listen_address: "0.0.0.0"' \
      '  http_listen_port: 3101' \
      'collection:' \
      '  paths:' \
      '    - "/var/log/containers/*.log"' \
      '  positions_file: "/var/lib/loglet/positions.yaml"' \
      'output:' \
      '  loki:' \
      '    # Empty (LOKI_URL unset): lines go to stdout.' \
      '    url: "${LOKI_URL:-}"' \
    > /etc/loglet/loglet.yaml \
 && /usr/bin/loglet -version \
 && /usr/bin/loglet -check-config -config /etc/loglet/loglet.yaml >/dev/null

# Debian's libcurl links librtmp, which links GnuTLS, whose library constructor
# initialises GnuTLS (and loads p11-kit's modules) in every process that loads
# it: 0.75 MiB of resident memory for nothing, since loglet speaks only HTTP(S)
# through OpenSSL (CURLOPT_PROTOCOLS_STR "http,https"). This skips that.
ENV GNUTLS_NO_IMPLICIT_INIT=1
USER 65534:65534
EXPOSE 3101
ENTRYPOINT ["/usr/bin/loglet"]
CMD ["-config", "/etc/loglet/loglet.yaml"]
