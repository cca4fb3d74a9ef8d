# onepd in a container: build with the Rust toolchain, run on slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin onepd

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/onepd /usr/local/bin/onepd
WORKDIR /var/lib/onepd
ENV ONEPD_DATA_DIR=/var/lib/onepd/data \
    ONEPD_GRPC_ADDR=0.0.0.0:50051 \
    ONEPD_HTTP_ADDR=0.0.0.0:8080
EXPOSE 50051 8080
VOLUME ["/var/lib/onepd/data"]
ENTRYPOINT ["onepd"]
CMD ["serve"]
