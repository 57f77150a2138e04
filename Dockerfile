# precis in a container: build, then a slim runtime with the binary only.
#
#   docker build -t precis .
#   docker run -p 8080:8080 -v precis-models:/var/lib/precis precis
#
# Models are not baked in: the server fetches the ones it routes into
# PRECIS_HOME (a volume) at start, with progress in the log, or finds them
# there when the volume is mounted already filled.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin precis \
 && install -m 0755 target/release/precis /usr/local/bin/precis

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/precis --create-home precis
COPY --from=build /usr/local/bin/precis /usr/local/bin/precis
USER precis
ENV PRECIS_HOME=/var/lib/precis \
    PRECIS_ADDR=0.0.0.0:8080 \
    PRECIS_CACHE=/var/lib/precis/results.sqlite3
VOLUME /var/lib/precis
EXPOSE 8080
# /health answers as soon as the process listens (models may still load);
# orchestrators route traffic on /ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["precis"]
CMD ["serve"]
