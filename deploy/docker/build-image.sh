#!/usr/bin/env bash
# Builds the ironhub container image offline, without a base image or a registry.
#
# It takes the release binary (building it when missing), assembles a minimal root file system in a
# temporary directory (the binary, the shared libraries `ldd` lists for it with the dynamic loader,
# /etc/passwd and /etc/group with the `ironhub` user 10001, /etc/nsswitch.conf, /tmp, /data owned by
# 10001), packs it into a reproducible tar and hands it to `docker import` with the image settings a
# Dockerfile would have made. Running it again with an unchanged binary does nothing.
#
# Environment:
#   IRONHUB_IMAGE      image name and tag                      (default ironhub:latest)
#   IRONHUB_BIN        use this binary instead of the release build
#   IRONHUB_BUILD=1    run `cargo build --release -p ironhub-broker` even if the binary exists
#   IRONHUB_STRIP=0    keep the debug info (the unstripped binary is ~500 MB; stripped, far less)
#   CARGO_TARGET_DIR   where cargo builds (default as in the Makefile: /var/cache/ironhub/target,
#                      or ~/.cache/ironhub/target when /var/cache is not writable)
set -euo pipefail

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }

IMAGE="${IRONHUB_IMAGE:-ironhub:latest}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
IRONHUB_UID=10001

command -v docker >/dev/null || die "docker not found; install Docker Engine (this script only needs the local daemon, no registry)"
command -v ldd >/dev/null || die "ldd not found (package libc-bin)"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (is it running, and may this user use it?)"

# --- 1. the binary -----------------------------------------------------------------------------------
if [[ -n "${IRONHUB_BIN:-}" ]]; then
  BIN="$IRONHUB_BIN"
  [[ -x "$BIN" ]] || die "IRONHUB_BIN=$BIN is not an executable file"
  say "using $BIN (IRONHUB_BIN)"
else
  if [[ -z "${CARGO_TARGET_DIR:-}" ]]; then
    if [[ -w /var/cache ]]; then CARGO_TARGET_DIR=/var/cache/ironhub/target; else CARGO_TARGET_DIR="$HOME/.cache/ironhub/target"; fi
  fi
  export CARGO_TARGET_DIR
  BIN="$CARGO_TARGET_DIR/release/ironhub"
  if [[ ! -x "$BIN" || "${IRONHUB_BUILD:-0}" == 1 ]]; then
    command -v cargo >/dev/null || die "$BIN is missing and cargo is not installed (install Rust from https://rustup.rs, or set IRONHUB_BIN)"
    say "building the release binary (cargo build --release -p ironhub-broker, target dir $CARGO_TARGET_DIR)"
    (cd "$REPO_ROOT" && cargo build --release -p ironhub-broker)
    [[ -x "$BIN" ]] || die "cargo finished but $BIN does not exist"
  else
    say "reusing $BIN (set IRONHUB_BUILD=1 to rebuild it first)"
    newer="$(find "$REPO_ROOT" -path "$REPO_ROOT/target" -prune -o -name '*.rs' -newer "$BIN" -print -quit 2>/dev/null || true)"
    [[ -z "$newer" ]] || say "note: sources are newer than the binary (e.g. ${newer#"$REPO_ROOT"/}); IRONHUB_BUILD=1 rebuilds"
  fi
fi
"$BIN" --version >/dev/null 2>&1 || die "$BIN --version failed; is it a binary for this machine?"

# --- 2. the root file system ---------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ironhub-image.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/rootfs"
mkdir -p "$ROOT"/{usr/local/bin,etc,tmp,data}
chmod 1777 "$ROOT/tmp"
chmod 0750 "$ROOT/data"

cp "$BIN" "$ROOT/usr/local/bin/ironhub"
if [[ "${IRONHUB_STRIP:-1}" != 0 ]]; then
  if command -v strip >/dev/null; then
    strip --strip-debug "$ROOT/usr/local/bin/ironhub"   # keeps the symbol table, so backtraces still name functions
  else
    say "note: strip not found (package binutils); the image keeps the debug info"
  fi
fi
chmod 0755 "$ROOT/usr/local/bin/ironhub"

# Every library ldd lists, at the path the loader will look for it, plus the loader itself (the ELF
# interpreter, e.g. /lib64/ld-linux-x86-64.so.2). Symlinks are followed: the file lands under its soname.
ldd_out="$(ldd "$BIN" 2>&1)" || die "ldd $BIN failed (is it a static or foreign binary?): $ldd_out"
libs=()
while read -r line; do
  case "$line" in
    *"=> not found"*) die "ldd: a library is missing on this machine: $line" ;;
    *"=> /"*) p="${line#*=> }"; libs+=("${p%% (*}") ;;
    /*) libs+=("${line%% (*}") ;;                  # the dynamic loader line
    *) ;;                                          # linux-vdso.so.1 (in the kernel) and the like
  esac
done <<<"$ldd_out"
[[ ${#libs[@]} -gt 0 ]] || die "ldd listed no libraries for $BIN"
for lib in "${libs[@]}"; do
  mkdir -p "$ROOT$(dirname "$lib")"
  cp -L "$lib" "$ROOT$lib"
  say "  + $lib"
done

cat >"$ROOT/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
ironhub:x:$IRONHUB_UID:$IRONHUB_UID:ironhub:/data:/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<EOF
root:x:0:
nogroup:x:65534:
ironhub:x:$IRONHUB_UID:
EOF
# /etc/hosts first, then DNS (Docker's embedded resolver). Without this file glibc's default is
# "dns [!UNAVAIL=return] files", which never reaches /etc/hosts when DNS answers "not found".
cat >"$ROOT/etc/nsswitch.conf" <<'EOF'
passwd: files
group:  files
hosts:  files dns
EOF

# A reproducible tar: sorted names, fixed times, numeric owners; /data appended owned by the ironhub user.
TAR="$WORK/rootfs.tar"
tar_opts=(--sort=name --mtime=@0 --numeric-owner --format=gnu)
tar -C "$ROOT" "${tar_opts[@]}" --owner=0 --group=0 --exclude=./data -cf "$TAR" .
tar -C "$ROOT" "${tar_opts[@]}" --owner="$IRONHUB_UID" --group="$IRONHUB_UID" -rf "$TAR" ./data

# --- 3. docker import ---------------------------------------------------------------------------------
changes=(
  'ENTRYPOINT ["/usr/local/bin/ironhub"]'
  'CMD ["serve","--data-dir","/data"]'
  "USER $IRONHUB_UID"
  'EXPOSE 1883 8083 18080 17000/udp'
  'ENV IRONHUB_API=0.0.0.0:18080'
  'WORKDIR /data'
  'VOLUME /data'
)
# The fingerprint covers the file system and the settings; it is stored as the image's comment so that
# an unchanged rebuild can be skipped.
digest="$( { sha256sum <"$TAR"; printf '%s\n' "${changes[@]}"; } | sha256sum | cut -c1-64)"
comment="ironhub rootfs $digest"
old_id="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
if [[ -n "$old_id" && "$(docker image inspect --format '{{.Comment}}' "$IMAGE")" == "$comment" ]]; then
  say "$IMAGE is up to date ($old_id); nothing to do"
  exit 0
fi

change_args=()
for c in "${changes[@]}"; do change_args+=(--change "$c"); done
say "importing $(du -h "$TAR" | cut -f1) root file system as $IMAGE"
new_id="$(docker import "${change_args[@]}" --message "$comment" "$TAR" "$IMAGE")"
# The previous build of this tag is now untagged; remove it unless a container still uses it.
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
  if [[ "$(docker image inspect --format '{{len .RepoTags}}' "$old_id" 2>/dev/null || echo 1)" == 0 ]]; then
    docker image rm "$old_id" >/dev/null 2>&1 && say "removed the previous image $old_id" \
      || say "note: the previous image $old_id is still used by a container; 'docker image prune' removes it later"
  fi
fi
say "built $IMAGE ($new_id)"
docker run --rm "$IMAGE" --version >&2 || die "the new image does not run: docker run --rm $IMAGE --version failed"
say "try: docker run --rm -p 127.0.0.1:18080:18080 -v ironhub-data:/data $IMAGE"
