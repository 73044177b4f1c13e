# syntax=docker/dockerfile:1
# Builds both services into one small runtime image; docker-compose.yml picks the binary per
# service with `command:`.
#
# The base images are build arguments: the defaults are what `docker compose up --build`
# pulls; a machine that cannot pull them names local ones instead (CI does, see .ci/compose).

ARG RUST_VERSION=1.95
ARG BUILD_IMAGE=rust:${RUST_VERSION}-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# Manifests first, with empty targets, so the dependency layer is rebuilt only when
# Cargo.toml/Cargo.lock change, not on every source edit. Cargo loads the whole workspace, so
# every member's manifest is here (tests/packaging.rs checks it); the members the services do
# not depend on (loadgen, test-support) keep their empty targets, which are never compiled.
COPY Cargo.toml Cargo.lock ./
COPY webhook-common/Cargo.toml webhook-common/Cargo.toml
COPY orders-service/Cargo.toml orders-service/Cargo.toml
COPY notification-service/Cargo.toml notification-service/Cargo.toml
COPY loadgen/Cargo.toml loadgen/Cargo.toml
COPY test-support/Cargo.toml test-support/Cargo.toml
# `-p`: the workspace root is a package too (the demo launcher), and a bare `--bin` only looks
# there.
RUN mkdir -p src webhook-common/src webhook-common/benches orders-service/src notification-service/src \
      loadgen/src test-support/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > webhook-common/benches/signing.rs \
 && touch webhook-common/src/lib.rs orders-service/src/lib.rs notification-service/src/lib.rs \
      test-support/src/lib.rs \
 && echo 'fn main() {}' > orders-service/src/main.rs \
 && echo 'fn main() {}' > notification-service/src/main.rs \
 && echo 'fn main() {}' > loadgen/src/main.rs \
 && cargo build --release --locked -p orders-service -p notification-service \
      --bin orders-service --bin notification-service \
 && rm -rf src webhook-common/src orders-service/src notification-service/src
# The real sources; touch so cargo sees them as newer than the placeholder build.
COPY src src
COPY webhook-common webhook-common
COPY orders-service orders-service
COPY notification-service notification-service
RUN find src webhook-common orders-service notification-service -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p orders-service -p notification-service \
      --bin orders-service --bin notification-service

FROM ${RUNTIME_IMAGE} AS runtime
# curl is for the healthchecks; ca-certificates for HTTPS webhook endpoints.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin app \
 && mkdir /data && chown app:app /data
# CI builds the binaries on the host and passes them as a build context named `build`, which
# takes this stage's place (.ci/compose); everyone else gets the stage above.
COPY --from=build /src/target/release/orders-service /usr/local/bin/orders-service
COPY --from=build /src/target/release/notification-service /usr/local/bin/notification-service
USER app
WORKDIR /data
# Named volumes mounted here inherit the app user's ownership.
VOLUME ["/data"]
ENV RUST_LOG=info
EXPOSE 8000 8001
# Each service is checked on its own port; compose overrides this per service.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${HEALTH_PORT:-8000}/healthz" || exit 1
CMD ["orders-service"]
