# Multi-stage build: compile in the Rust image, run from a slim Debian with only the binary
# and its configuration, as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY tests tests
COPY benches benches
COPY migrations migrations
COPY templates templates
COPY config config
RUN cargo build --release --locked --bin portcullis

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app portcullis
WORKDIR /app
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
COPY config config
USER portcullis
EXPOSE 8443 8080 9901
ENTRYPOINT ["portcullis"]
CMD ["serve", "--config", "config/gateway.compose.yaml"]
