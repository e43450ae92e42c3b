# chatd's image: built from this repository with the README's build command, run as an
# unprivileged user on Debian slim. The same image serves `chatd serve` (the default),
# `chatd push-worker` and `chatd migrate`.
#
#   docker build -t chatd .
#   docker run -p 50051:50051 -v chatd-data:/var/lib/chatd chatd     # the embedded default
#
# deploy/compose.yaml runs a two-node cluster with PostgreSQL, Redis and Kafka from it, and
# deploy/k8s/ has the Kubernetes manifests (README: "Deployment").

# The toolchain image has what the build needs: librdkafka and SQLite are compiled from source
# by their crates (make and a C compiler), librdkafka's TLS links the system OpenSSL (libssl-dev
# and pkg-config are in the image), and the protobuf compiler is a crate (protox).
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p chatd \
    && cp target/release/chatd /usr/local/bin/chatd

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/chatd --create-home chatd
COPY --from=build /usr/local/bin/chatd /usr/local/bin/chatd
USER 10001
# Every setting is a CHATD_* variable (README: "Settings"); these make the image reachable
# and keep the embedded default's data on the volume.
ENV CHATD_LISTEN=0.0.0.0:50051 \
    CHATD_DATA_DIR=/var/lib/chatd
VOLUME /var/lib/chatd
# gRPC, gRPC-web, WebSocket (/ws), /healthz, /readyz and /metrics share this port.
EXPOSE 50051
ENTRYPOINT ["chatd"]
CMD ["serve"]
