# The ringkv node image: one static binary, FROM scratch (nothing to pull).
#
# Build it with scripts/build-image.sh: it compiles the static binary on this
# machine (or takes a prebuilt one with --binary) and runs `docker build` on a
# context holding only this file, rootfs/ (the binary at /ringkv, plus the
# loader and shared libraries of a dynamically linked one) and an empty data/
# directory (`docker build .` on the work tree does not work: target/ is
# never sent, see .dockerignore).
FROM scratch
COPY rootfs/ /
# The data directory belongs to the unprivileged user the node runs as; a
# new volume mounted there takes its owner from the image.
COPY --chown=65532:65532 data/ /data/
USER 65532:65532
# gRPC (client API and peer transport) and HTTP (/healthz, /readyz, /status)
# listen on every interface; any RINGKV_* variable or flag overrides these.
ENV RINGKV_LISTEN=0.0.0.0:7379 \
    RINGKV_HTTP=0.0.0.0:7380 \
    RINGKV_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 7379 7380
ENTRYPOINT ["/ringkv"]
CMD ["serve"]
