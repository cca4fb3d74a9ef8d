# syntax=docker/dockerfile:1
# onepd in a container: built with the Rust toolchain, run on slim Debian as
# an unprivileged user. Build with BuildKit (the default since Docker 23):
#   docker build -t onepd .
# Dependencies and the target directory live in BuildKit cache mounts, so a
# change to onepd's own code rebuilds only onepd's crates.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked --bin onepd \
    && cp target/release/onepd /usr/local/bin/onepd

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 onepd \
    && useradd --system --uid 10001 --gid onepd --home-dir /var/lib/onepd --shell /usr/sbin/nologin onepd \
    && install -d -o onepd -g onepd -m 0700 /var/lib/onepd /var/lib/onepd/data
COPY --from=build /usr/local/bin/onepd /usr/local/bin/onepd
USER onepd:onepd
WORKDIR /var/lib/onepd
# Inside the container onepd listens on every interface of the container's
# own network; which host interfaces reach it is decided where the ports are
# published (docker-compose.yml publishes them on 127.0.0.1 only).
ENV ONEPD_DATA_DIR=/var/lib/onepd/data \
    ONEPD_GRPC_ADDR=0.0.0.0:50051 \
    ONEPD_HTTP_ADDR=0.0.0.0:8080
EXPOSE 50051 8080
VOLUME ["/var/lib/onepd/data"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["onepd", "healthcheck", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["onepd"]
CMD ["serve"]
