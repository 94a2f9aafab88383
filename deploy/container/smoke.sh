#!/usr/bin/env bash
# Builds and runs the repository's Dockerfile with Buildah and Podman
# without a registry, a Docker daemon or a Rust build: the two base images
# are replaced (through the Dockerfile's RUST_IMAGE and RUNTIME_IMAGE build
# arguments) by stand-ins made here from Debian's static busybox, whose
# `cargo` and `rustup` only check the arguments they are given and write a
# stub `hearth` script. What this shows: the Dockerfile parses and builds
# under Buildah, the build context honours .dockerignore, the build step
# receives the workspace and runs the expected commands, and the final
# image has the intended user, HEARTH_HOME volume (owned by that user),
# port, entrypoint and command, and runs read-only as that user; the MODEL
# build argument runs `hearth model pull` in the build stage and puts the
# file it names where HEARTH_MODELS_DIR points. What it
# does not show: that hearth compiles in rust:1.95-bookworm, or that the
# real binary runs on distroless (both need the real base images).
#
# Needs (Debian): buildah podman runc busybox-static. Run as root (the
# sandbox this was written in had no user namespaces for rootless builds);
# all images live in a throwaway storage under a temporary directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

for tool in buildah podman runc busybox; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install buildah podman runc busybox-static" >&2; exit 2; }
done
busybox=$(command -v busybox)
file -L "$busybox" 2>/dev/null | grep -q "statically linked" || { echo "$busybox is not static: apt-get install busybox-static" >&2; exit 2; }

tmp=$(mktemp -d)
store=(--root "$tmp/storage" --runroot "$tmp/run" --storage-driver vfs)
cleanup() {
    podman "${store[@]}" rm -af >/dev/null 2>&1 || true
    buildah "${store[@]}" rm -a >/dev/null 2>&1 || true
    buildah "${store[@]}" rmi -af >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
B=(buildah "${store[@]}")
# runc: Debian's crun refuses this sandbox's hybrid cgroup layout. The
# lowered ulimits: the sandbox refuses podman's default of raising them.
P=(podman "${store[@]}" --runtime runc --cgroup-manager cgroupfs --events-backend file)
RUNOPTS=(--network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

echo "== stand-in base images"
mkdir -p "$tmp/rust" "$tmp/runtime"
cp "$busybox" "$tmp/rust/busybox"
cp "$busybox" "$tmp/runtime/busybox"
cat >"$tmp/rust/cargo" <<'EOF'
#!/bin/sh
echo "stand-in cargo: $*"
[ "$*" = "build --release --locked -p hearth --bin hearth" ] || { echo "unexpected cargo arguments" >&2; exit 1; }
for f in Cargo.toml Cargo.lock host/build.rs host/src/main.rs registry.toml wit/v0.1.0/world.wit sdk/build/Cargo.toml tests/Cargo.toml; do
    [ -f "$f" ] || { echo "missing from the build context: $f" >&2; exit 1; }
done
for d in .git bench/llama-cpp/.work deploy Dockerfile; do
    [ ! -e "$d" ] || { echo "should have been left out by .dockerignore: $d" >&2; exit 1; }
done
mkdir -p target/release
printf '#!/busybox/sh\nif [ "$1 $2" = "model pull" ]; then /busybox/mkdir -p "$HEARTH_HOME/models" && echo "baked $3" >"$HEARTH_HOME/models/baked.Q8_0.gguf" && echo "$HEARTH_HOME/models/baked.Q8_0.gguf"; exit; fi\necho "stand-in hearth: uid=$(/busybox/id -u) HEARTH_HOME=$HEARTH_HOME args: $*"\n/busybox/touch "$HEARTH_HOME/written" && echo "HEARTH_HOME writable"\n/busybox/touch /usr/local/bin/x 2>/dev/null || echo "root filesystem read-only"\n' >target/release/hearth
EOF
cat >"$tmp/rust/rustup" <<'EOF'
#!/bin/sh
echo "stand-in rustup: $*"
[ "$*" = "target add wasm32-wasip2" ] || { echo "unexpected rustup arguments" >&2; exit 1; }
EOF
# Debian's static busybox has no `install` applet (the real image has
# coreutils'): the two forms the Dockerfile uses.
cat >"$tmp/rust/install" <<'EOF'
#!/bin/sh
case "$1 $2" in
    "-D -m") mkdir -p "$(dirname "$5")" && cp "$4" "$5" && chmod "$3" "$5" ;;
    "-d "*) shift; mkdir -p "$@" ;;
    *) echo "stand-in install: unsupported: $*" >&2; exit 1 ;;
esac
EOF
chmod +x "$tmp/rust/cargo" "$tmp/rust/rustup" "$tmp/rust/install"
cat >"$tmp/rust/Containerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY busybox /busybox/busybox
RUN ["/busybox/busybox", "--install", "-s", "/busybox"]
COPY cargo rustup /usr/local/cargo/bin/
COPY install /usr/local/bin/install
ENV PATH=/usr/local/cargo/bin:/usr/local/bin:/usr/bin:/bin CARGO_HOME=/usr/local/cargo
EOF
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$tmp/runtime/passwd"
cat >"$tmp/runtime/Containerfile" <<'EOF'
FROM scratch
COPY busybox /busybox/busybox
RUN ["/busybox/busybox", "--install", "-s", "/busybox"]
COPY passwd /etc/passwd
EOF
"${B[@]}" bud --isolation chroot -q -t localhost/stand-in-rust:1.95-bookworm "$tmp/rust" >/dev/null
"${B[@]}" bud --isolation chroot -q -t localhost/stand-in-distroless:nonroot "$tmp/runtime" >/dev/null
"${B[@]}" images

echo "== buildah bud: the repository's Dockerfile (OCI format, then Docker format)"
for format in oci docker; do
    "${B[@]}" bud --isolation chroot --pull-never --format "$format" \
        --build-arg RUST_IMAGE=localhost/stand-in-rust:1.95-bookworm \
        --build-arg RUNTIME_IMAGE=localhost/stand-in-distroless:nonroot \
        -t "localhost/hearth-smoke:$format" -f "$root/Dockerfile" "$root" 2>&1 | sed 's/^/    /'
done

echo "== buildah bud --build-arg MODEL=default (a model baked in)"
"${B[@]}" bud --isolation chroot --pull-never --layers \
    --build-arg RUST_IMAGE=localhost/stand-in-rust:1.95-bookworm \
    --build-arg RUNTIME_IMAGE=localhost/stand-in-distroless:nonroot \
    --build-arg MODEL=default \
    -t localhost/hearth-smoke:baked -f "$root/Dockerfile" "$root" 2>&1 | sed 's/^/    /'
ctr=$("${B[@]}" from localhost/hearth-smoke:baked)
mnt=$("${B[@]}" mount "$ctr")
baked=$(cat "$mnt/usr/local/share/hearth/models/baked.Q8_0.gguf")
"${B[@]}" umount "$ctr" >/dev/null
"${B[@]}" rm "$ctr" >/dev/null
[ "$baked" = "baked default" ] || { echo "FAIL: the baked model is not in /usr/local/share/hearth/models" >&2; exit 1; }
echo "    model pulled at build time into /usr/local/share/hearth/models: ok"

echo "== image configuration"
"${B[@]}" inspect --format 'user={{.OCIv1.Config.User}} env={{.OCIv1.Config.Env}} volumes={{.OCIv1.Config.Volumes}} ports={{.OCIv1.Config.ExposedPorts}} entrypoint={{.OCIv1.Config.Entrypoint}} cmd={{.OCIv1.Config.Cmd}}' localhost/hearth-smoke:oci
echo
expect() { grep -qF -- "$1" <<<"$2" || { echo "FAIL: expected $1" >&2; exit 1; }; }
config=$("${B[@]}" inspect --format '{{.OCIv1.Config.User}}|{{.OCIv1.Config.Env}}|{{.OCIv1.Config.Volumes}}|{{.OCIv1.Config.ExposedPorts}}|{{.OCIv1.Config.Entrypoint}}|{{.OCIv1.Config.Cmd}}' localhost/hearth-smoke:oci)
expect "65532:65532|" "$config"
expect "HEARTH_HOME=/data" "$config"
expect "HEARTH_MODELS_DIR=/usr/local/share/hearth/models" "$config"
expect "map[/data:{}]" "$config"
expect "map[8080/tcp:{}]" "$config"
expect "[/usr/local/bin/hearth]" "$config"
expect "[--log-format json --log-to stdout serve --addr 0.0.0.0:8080]" "$config"
ctr=$("${B[@]}" from localhost/hearth-smoke:oci)
mnt=$("${B[@]}" mount "$ctr")
ls -ln "$mnt/data" -d "$mnt/usr/local/bin/hearth" | sed "s|$mnt||"
[ "$(stat -c %u:%g "$mnt/data")" = 65532:65532 ] || { echo "FAIL: /data is not owned by 65532" >&2; exit 1; }
"${B[@]}" umount "$ctr" >/dev/null
"${B[@]}" rm "$ctr" >/dev/null

echo "== podman run --read-only, a named volume on /data"
out=$("${P[@]}" run --rm --read-only "${RUNOPTS[@]}" -v hearth-smoke-data:/data localhost/hearth-smoke:oci 2>&1)
echo "$out" | sed 's/^/    /'
expect "uid=65532 HEARTH_HOME=/data args: --log-format json --log-to stdout serve --addr 0.0.0.0:8080" "$out"
expect "HEARTH_HOME writable" "$out"
expect "root filesystem read-only" "$out"
out=$("${P[@]}" run --rm --read-only "${RUNOPTS[@]}" localhost/hearth-smoke:oci serve --addr 127.0.0.1:8081 2>&1)
expect "args: serve --addr 127.0.0.1:8081" "$out"
echo "    arguments after the image replace CMD: ok"

# With HEARTH_BIN (a hearth binary built on this machine) and HEARTH_MODEL_FILE
# (a GGUF file): the same Dockerfile again, its build stage handing over
# that binary instead of compiling, its runtime stage on a distroless-like
# base made here from exactly the shared libraries the binary needs (no
# shell, no busybox). The container then runs the real `hearth serve` as
# the image says (read-only, uid 65532, /data a volume, the model mounted
# read-only, no network), and this script checks from inside it, with
# hearth's own commands: /readyz turns 200, a chat is answered over the
# API, every log line is JSON, SIGTERM ends it cleanly.
if [ -n "${HEARTH_BIN:-}" ]; then
    [ -x "$HEARTH_BIN" ] && [ -f "${HEARTH_MODEL_FILE:-}" ] || { echo "HEARTH_BIN must be a hearth binary and HEARTH_MODEL_FILE a .gguf file" >&2; exit 2; }
    echo "== the real binary ($HEARTH_BIN) on a base of its own shared libraries"
    mkdir -p "$tmp/real-rust" "$tmp/real-runtime"
    cp "$busybox" "$tmp/real-rust/busybox"
    cp "$tmp/rust/rustup" "$tmp/rust/install" "$tmp/real-rust/"
    cp "$HEARTH_BIN" "$tmp/real-rust/hearth"
    printf '#!/bin/sh\necho "stand-in cargo, handing over a prebuilt hearth: $*"\n[ "$*" = "build --release --locked -p hearth --bin hearth" ] || { echo "unexpected cargo arguments" >&2; exit 1; }\nmkdir -p target/release && cp /stand-in/hearth target/release/hearth\n' >"$tmp/real-rust/cargo"
    chmod +x "$tmp/real-rust/cargo"
    printf '%s\n' 'FROM scratch' 'COPY busybox /bin/busybox' 'RUN ["/bin/busybox", "--install", "-s", "/bin"]' \
        'COPY cargo rustup /usr/local/cargo/bin/' 'COPY install /usr/local/bin/install' 'COPY hearth /stand-in/hearth' \
        'ENV PATH=/usr/local/cargo/bin:/usr/local/bin:/usr/bin:/bin CARGO_HOME=/usr/local/cargo' >"$tmp/real-rust/Containerfile"
    # The runtime base: the dynamic loader and libraries `ldd` names, at
    # their paths, and the nonroot user; like distroless/cc, nothing else.
    for lib in $(ldd "$HEARTH_BIN" | grep -o '/[^ ]*' | sort -u); do
        mkdir -p "$tmp/real-runtime/root$(dirname "$lib")"
        cp -L "$lib" "$tmp/real-runtime/root$lib"
    done
    mkdir -p "$tmp/real-runtime/root/etc"
    cp "$tmp/runtime/passwd" "$tmp/real-runtime/root/etc/passwd"
    printf '%s\n' 'FROM scratch' 'COPY root/ /' >"$tmp/real-runtime/Containerfile"
    "${B[@]}" bud --isolation chroot -q -t localhost/stand-in-rust:real "$tmp/real-rust" >/dev/null
    "${B[@]}" bud --isolation chroot -q -t localhost/stand-in-distroless:real "$tmp/real-runtime" >/dev/null
    "${B[@]}" bud --isolation chroot --pull-never --format docker \
        --build-arg RUST_IMAGE=localhost/stand-in-rust:real \
        --build-arg RUNTIME_IMAGE=localhost/stand-in-distroless:real \
        -t localhost/hearth-smoke:real -f "$root/Dockerfile" "$root" 2>&1 | sed 's/^/    /'
    # A copy the container's user may read, whatever the original's mode.
    model_dir="$tmp/models"
    model_name=$(basename "$HEARTH_MODEL_FILE")
    mkdir -p "$model_dir" && install -m 0644 "$HEARTH_MODEL_FILE" "$model_dir/$model_name"
    ctr=$("${P[@]}" run -d --read-only "${RUNOPTS[@]}" \
        -v hearth-smoke-real:/data -v "$model_dir:/models:ro" \
        -e HEARTH_MODEL="/models/$model_name" -e HEARTH_API_KEYS=smoke-key \
        localhost/hearth-smoke:real)
    H=("${P[@]}" exec "$ctr" /usr/local/bin/hearth)
    ready=""
    for _ in $(seq 1 240); do
        if "${H[@]}" health --addr 127.0.0.1:8080 >/dev/null 2>&1; then ready=1; break; fi
        sleep 0.5
    done
    [ -n "$ready" ] || { "${P[@]}" logs "$ctr" >&2; echo "FAIL: /readyz never answered 200" >&2; exit 1; }
    echo "    hearth health (the image's HEALTHCHECK command): ready"
    answer=$("${H[@]}" run --url http://127.0.0.1:8080 --api-key smoke-key --max-tokens 8 --no-plugins "Say hello")
    [ -n "$answer" ] || { echo "FAIL: no answer from the API" >&2; exit 1; }
    echo "    a chat over the API from inside the container: $(echo "$answer" | head -c 60)"
    "${P[@]}" stop -t 30 "$ctr" >/dev/null
    code=$("${P[@]}" inspect --format '{{.State.ExitCode}}' "$ctr")
    logs=$("${P[@]}" logs "$ctr" 2>&1)
    "${P[@]}" rm "$ctr" >/dev/null
    [ "$code" = 0 ] || { echo "$logs" >&2; echo "FAIL: exit code $code after SIGTERM" >&2; exit 1; }
    echo "    SIGTERM: drained and exited 0"
    not_json=$(echo "$logs" | grep -v '^{' || true)
    [ -z "$not_json" ] || { echo "FAIL: log lines that are not JSON:" >&2; echo "$not_json" >&2; exit 1; }
    for message in "loading the model" "model loaded" "serving " "answered" "stopped"; do
        expect "$message" "$logs"
    done
    echo "    $(echo "$logs" | wc -l) log lines, all JSON, start-up to stop"
fi
echo "container: smoke test passed"
