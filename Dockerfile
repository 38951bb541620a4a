# syntax=docker/dockerfile:1
# rotagate: multi-stage build, distroless runtime, non-root.
#   docker build -t rotagate .
#   docker run -v $PWD/rotagate.toml:/etc/rotagate/rotagate.toml:ro -p 6432:6432 rotagate
# Config comes from the mounted file; any key can be overridden with ROTAGATE_<SECTION>__<KEY>.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that a change to src/ does not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked --bin rotagate \
 && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin rotagate \
 && strip target/release/rotagate

# glibc and CA certificates, no shell, user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/rotagate /usr/local/bin/rotagate
USER nonroot:nonroot
# Clients, and the admin listener (health, readiness, metrics). The admin listener binds
# 127.0.0.1 by default: set ROTAGATE_ADMIN__ADDR=0.0.0.0:9930 to let Prometheus and probes in.
EXPOSE 6432 9930
ENV ROTAGATE_CONFIG=/etc/rotagate/rotagate.toml
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/rotagate", "healthcheck", "--addr", "127.0.0.1:9930"]
ENTRYPOINT ["/usr/local/bin/rotagate"]
CMD ["run"]
