#!/usr/bin/env bash
# Image layering benchmark: `cachectl image` versus ko, packaging the same Go service for
# linux/amd64, linux/arm64, linux/arm/v7 and linux/s390x on the same base image.
#
#   benches/image/run.sh          # RUNS=5 by default; needs go, python3, docker-registry
#
# 1. Wall time (median of RUNS) to produce the 4-platform image in an OCI layout. ko always
#    runs `go build` itself, so our side is `go build` per platform (in parallel, as ko does)
#    followed by `cachectl image`; both start from a warm Go build cache. Each tool also runs
#    with its caches warm: KOCACHE for ko (which also keeps the binaries, so go build does not
#    relink them), cached for us (with the binaries kept in one directory likewise). Our image
#    step is also timed alone.
# 2. Blob bytes and requests of a first and an unchanged second push to a local
#    docker-registry 2.8, counted by a proxy in front of it (benches/image/proxy.py).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
runs=${RUNS:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cached/target}
export GOFLAGS="" GOTOOLCHAIN=local CGO_ENABLED=0
unset GOCACHEPROG SOURCE_DATE_EPOCH KOCACHE
platforms=(linux/amd64 linux/arm64 linux/arm/v7 linux/s390x)

# Lowercase only: ko turns the layout path into a repository name.
work=${TMPDIR:-/tmp}/imagebench-$$
rm -rf "$work" && mkdir -p "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'echo "failed: $BASH_COMMAND (KEEP=1 keeps $work; see its *.err files)" >&2' ERR

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}
now() { date +%s.%N; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
slug() { echo "${1//\//-}"; }

echo "building cachectl and cached (release)..." >&2
(cd "$root" && cargo build --release -q -p cachectl -p cached --bins)
cachectl=$CARGO_TARGET_DIR/release/cachectl
cached=$CARGO_TARGET_DIR/release/cached

echo "installing ko..." >&2
export GOBIN=$work/bin
go install github.com/google/ko@latest
ko=$GOBIN/ko
ko_version=$("$ko" version)

# A registry, the counting proxy in front of it, and a cached for the layer cache.
reg_port=$(free_port)
proxy_port=$(free_port)
cached_port=$(free_port)
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$reg_port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
: >"$work/proxy.log"
python3 "$here/proxy.py" "$proxy_port" "127.0.0.1:$reg_port" "$work/proxy.log" &
pids+=($!)
"$cached" --listen "127.0.0.1:$cached_port" --metrics-listen off --data-dir "$work/cached" >"$work/cached.log" 2>&1 &
pids+=($!)
wait_port "$reg_port"
wait_port "$proxy_port"
wait_port "$cached_port"
registry=127.0.0.1:$proxy_port
server=http://127.0.0.1:$cached_port

# The base: a small file per platform, like the /etc of a static base image.
base=$registry/base:v1
base_args=()
for p in "${platforms[@]}"; do
  printf 'ID=bench-base\nPLATFORM=%s\n' "$p" >"$work/base-$(slug "$p")"
  base_args+=(--platform "$p=$work/base-$(slug "$p")")
done
"$cachectl" image --no-cache "${base_args[@]}" --name os-release --dir /etc --push "$base" >/dev/null

build_one() {
  local platform=$1 out=$2 arch variant
  IFS=/ read -r _ arch variant <<<"$platform"
  GOOS=linux GOARCH=$arch GOARM=${variant#v} go build -trimpath -o "$out/${platform//\//-}/app" .
}
export -f build_one
go_build() { (cd "$here/app" && printf '%s\n' "${platforms[@]}" | xargs -P "$(nproc)" -I{} bash -c 'build_one "$@"' _ {} "$1"); }
binary_args() {
  for p in "${platforms[@]}"; do printf -- '--platform\n%s=%s/%s/app\n' "$p" "$1" "$(slug "$p")"; done
}

ours_image() { # BIN_DIR OUT_DIR [cachectl image flags...]
  local bin=$1 out=$2
  shift 2
  mapfile -t args < <(binary_args "$bin")
  "$cachectl" --server "$server" image "${args[@]}" --name app --base "$base" "$@" >"$out.json" 2>"$out.err"
}
ours_full() { # OUT_DIR BIN_DIR [flags]: go build into BIN_DIR, then image into a layout
  local out=$1 bin=$2
  shift 2
  mkdir -p "$out"
  go_build "$bin"
  ours_image "$bin" "$out" --oci-layout "$out/layout" "$@"
}
ko_platforms=$(IFS=,; echo "${platforms[*]}")
ko_build() { # OUT_DIR REPO [ko flags...]
  local out=$1 repo=$2
  shift 2
  (cd "$here/app" && KO_DOCKER_REPO="$repo" KO_DEFAULTBASEIMAGE="$base" \
    "$ko" build --bare --sbom=none --platform="$ko_platforms" "$@" ./ >"$out.out" 2>"$out.err")
}

time_runs() { # NAME COMMAND...: median seconds over $runs runs, each in a fresh directory
  local name=$1
  shift
  for i in $(seq "$runs"); do
    local out=$work/$name-$i
    mkdir -p "$out"
    local start
    start=$(now)
    "$@" "$out"
    awk -v end="$(now)" -v start="$start" 'BEGIN { print end - start }'
  done | median
}

echo "warming the Go build cache..." >&2
go_build "$work/warm/bin"
ko_build "$work/warm-ko" "$registry/warm" --push=false --oci-layout-path "$work/warm/ko-layout"
mkdir -p "$work/prebuilt" && go_build "$work/prebuilt/bin"

ko_layout() { mkdir -p "$1" && ko_build "$1/ko" "$registry/ko" --push=false --oci-layout-path "$1/layout"; }
ko_layout_cached() { KOCACHE=$work/kocache ko_layout "$1"; }
ours_cold() { ours_full "$1" "$1/bin" --no-cache; }
# Like KOCACHE's bin directory: binaries stay where go build can see they are up to date.
ours_warm() { ours_full "$1" "$work/ours-bin"; }
image_cold() { ours_image "$work/prebuilt/bin" "$1/img" --no-cache --oci-layout "$1/layout"; }
image_warm() { ours_image "$work/prebuilt/bin" "$1/img" --oci-layout "$1/layout"; }

echo "timing, $runs runs each..." >&2
ko_layout_cached "$work/kocache-warmup"
ours_warm "$work/cache-warmup" # fills the layer cache for these binaries
t_ko=$(time_runs ko ko_layout)
t_ko_cached=$(time_runs kocached ko_layout_cached)
t_ours_cold=$(time_runs ours-cold ours_cold)
t_ours_warm=$(time_runs ours-warm ours_warm)
t_image_cold=$(time_runs image-cold image_cold)
t_image_warm=$(time_runs image-warm image_warm)

# Pushes: a fresh repository each, the same image twice. Upload bytes are request bodies of
# blob POST/PATCH/PUT requests, as the proxy saw them.
push_counts() { # FROM_LINE: "<blob bytes> <blob upload requests> <all requests>"
  tail -n "+$1" "$work/proxy.log" |
    awk '$2 ~ /\/blobs\// && ($1 == "POST" || $1 == "PATCH" || $1 == "PUT") { bytes += $4; uploads++ } { all++ }
         END { printf "%d %d %d\n", bytes, uploads, all }'
}
measure_push() { # COMMAND...: prints the counts of one push
  local from
  from=$(($(wc -l <"$work/proxy.log") + 1))
  "$@"
  push_counts "$from"
}
ours_push() { ours_image "$work/prebuilt/bin" "$work/push-ours" --push "$registry/ours:v1"; }
ko_push() { ko_build "$work/push-ko" "$registry/ko-push"; }
read -r ours1_bytes ours1_uploads ours1_requests < <(measure_push ours_push)
read -r ours2_bytes ours2_uploads ours2_requests < <(measure_push ours_push)
read -r ko1_bytes ko1_uploads ko1_requests < <(measure_push ko_push)
read -r ko2_bytes ko2_uploads ko2_requests < <(measure_push ko_push)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
ms() { awk -v s="$1" 'BEGIN { printf "%.0f ms", s * 1000 }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
app_size=$(du -cb "$work"/prebuilt/bin/*/app | tail -1 | cut -f1)

cat <<EOF

Image layering: 4 platforms (${platforms[*]}), $(mib "$app_size") of binaries, base image from
a local docker-registry 2.8; median of $runs runs on $(nproc) cores; $ko_version vs cachectl.

| | ko | cachectl image | ko / cachectl |
| --- | --- | --- | --- |
| go build + image into an OCI layout, layer caches cold | $(ms "$t_ko") | $(ms "$t_ours_cold") | $(ratio "$t_ko" "$t_ours_cold")x |
| go build + image into an OCI layout, layer caches warm (KOCACHE / cached) | $(ms "$t_ko_cached") | $(ms "$t_ours_warm") | $(ratio "$t_ko_cached" "$t_ours_warm")x |
| image step alone (binaries already built), cache cold / warm | - | $(ms "$t_image_cold") / $(ms "$t_image_warm") | |
| first push: blob bytes uploaded (blob upload requests) | $(mib "$ko1_bytes") ($ko1_uploads) | $(mib "$ours1_bytes") ($ours1_uploads) | |
| second push, unchanged: blob bytes uploaded (blob upload requests) | $(mib "$ko2_bytes") ($ko2_uploads) | $(mib "$ours2_bytes") ($ours2_uploads) | |
| second push: all requests | $ko2_requests | $ours2_requests | |
EOF
