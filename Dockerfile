# sluice: the release binary in a distroless, non-root image.
#
#   docker build -t sluice:dev .
#   docker run --rm sluice:dev --help
#
# The build stage runs exactly what CI builds (scripts/test: `cargo build --release --locked
# -p sluice`), so the image holds the binary the tests were run against.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice \
    && install -D -m 0755 target/release/sluice /out/sluice

# glibc and CA certificates, no shell; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sluice /usr/local/bin/sluice
USER 65532:65532
# 80/443: the Gateway servers' ports (binding them needs NET_BIND_SERVICE, see
# deploy/kubernetes/gateway.yaml); 15000: the admin API; 15001: the sidecar's explicit proxy.
EXPOSE 80 443 15000 15001
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["gateway", "--config", "/etc/sluice/config"]
