# syntax=docker/dockerfile:1
#
# runfleet in a container: `docker build -t runfleet .`, then
#
#   docker run -d --name runfleet -p 8080:8080 \
#     -v runfleet-data:/var/lib/runfleet \
#     -v /etc/runfleet:/etc/runfleet:ro \
#     -e GITHUB_TOKEN -e RUNFLEET_WEBHOOK_SECRET \
#     runfleet
#
# The config is read from /etc/runfleet/runfleet.toml (RUNFLEET_CONFIG). In a
# container it must listen on all interfaces (`[server] listen =
# "0.0.0.0:8080"`) and keep its SQLite store on the volume (`store =
# "sqlite:///var/lib/runfleet/runfleet.db"`, or the relative default, since
# the working directory is the volume). See docs/operations.md.

# ---- build ----------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# The registry and the target directory are BuildKit cache mounts, so a
# rebuild after a source change recompiles only runfleet's own crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p runfleet --locked \
    && install -D -m 0755 target/release/runfleet /out/runfleet

# ---- runtime --------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to GitHub and AWS. curl: the HEALTHCHECK below.
# sqlite3: online backups of the store (`docker exec runfleet sqlite3 ...`).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl sqlite3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 runfleet \
    && useradd --system --uid 10001 --gid runfleet --home-dir /var/lib/runfleet \
       --no-create-home --shell /usr/sbin/nologin runfleet \
    && install -d -o runfleet -g runfleet -m 0750 /var/lib/runfleet \
    && install -d -m 0755 /etc/runfleet
COPY --from=build /out/runfleet /usr/local/bin/runfleet

ENV RUNFLEET_CONFIG=/etc/runfleet/runfleet.toml \
    RUNFLEET_LOG=info
# The store lives here (the working directory, so the default relative
# `sqlite://runfleet.db` lands on the volume too).
VOLUME ["/var/lib/runfleet"]
WORKDIR /var/lib/runfleet
USER 10001:10001
EXPOSE 8080
# `serve` stops on SIGTERM after finishing the step under way; give it time
# with `docker stop -t 60` (see docs/operations.md).
STOPSIGNAL SIGTERM
# /healthz answers 200 while the process runs. With another port in
# `server.listen`, override it: `docker run --health-cmd 'curl -fsS
# http://127.0.0.1:PORT/healthz'`. Readiness (/readyz) is not a liveness
# signal: a GitHub outage must not get the controller restarted.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "--max-time", "4", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["runfleet"]
CMD ["serve"]
