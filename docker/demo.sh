#!/usr/bin/env bash
# Runs berth's main job end to end on one machine: starts a private upstream registry
# (Debian's docker-registry with a password), pushes a small image into it, starts berth in
# front of it and pulls the image through berth with a license, as a customer would.
#
# Usage: docker/demo.sh   (leaves berth running on 127.0.0.1:$BERTH_PORT; Ctrl-C stops it)
#
# Needs: a Debian or Ubuntu machine (apt), root or sudo for the packages it installs
# (docker-registry, skopeo, apache2-utils, python3, curl) when they are missing, cargo at
# least at Cargo.toml's rust-version (rustup: `rustup update stable`), and two free
# TCP ports on 127.0.0.1: UPSTREAM_PORT (default 5000) and BERTH_PORT (default 5443),
# e.g. `UPSTREAM_PORT=15000 BERTH_PORT=15443 docker/demo.sh`. BERTH_DEMO_DIR (default
# /tmp/berth-demo) is where it works; it is emptied first.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=${BERTH_DEMO_DIR:-/tmp/berth-demo}
upstream_port=${UPSTREAM_PORT:-5000}
berth_port=${BERTH_PORT:-5443}
export DEBIAN_FRONTEND=noninteractive

die() {
  echo "demo.sh: $*" >&2
  echo "demo.sh needs: apt (Debian/Ubuntu), root or sudo to install missing packages, cargo >= $want_rust, free ports (UPSTREAM_PORT, BERTH_PORT)." >&2
  exit 1
}

# cargo first: the build is the slow part, so fail before installing anything.
want_rust=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
have_rust=$(cargo --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$want_rust" "$have_rust" | sort -V | head -1)" != "$want_rust" ]; then
  die "cargo $have_rust is older than $want_rust (Cargo.toml's rust-version): run \`rustup update stable\`"
fi

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
for p in "$upstream_port" "$berth_port"; do
  port_free "$p" || die "port $p on 127.0.0.1 is in use: pick others with UPSTREAM_PORT=… BERTH_PORT=…"
done
[ "$upstream_port" != "$berth_port" ] || die "UPSTREAM_PORT and BERTH_PORT are the same ($berth_port)"

need=()
for pkg in docker-registry skopeo apache2-utils python3 curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
  if [ "$(id -u)" = 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null; then
    echo "demo.sh: installing ${need[*]} with sudo" >&2
    sudo=(sudo)
  else
    die "missing ${need[*]}: run as root or install them yourself"
  fi
  "${sudo[@]}" apt-get update -q && "${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}" \
    || die "installing ${need[*]} failed"
fi
cargo build --release --locked
# Where cargo put it: a CARGO_TARGET_DIR set in the environment wins over ./target.
bin="$(cd "$root" && realpath "${CARGO_TARGET_DIR:-target}")/release/berth"
rm -rf "$work" && mkdir -p "$work"
cd "$work"

# 1. The vendor's private upstream, with a password berth stores and customers never see.
export UPSTREAM_PASSWORD="demo-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
htpasswd -Bbn vendor "$UPSTREAM_PASSWORD" > htpasswd
cat > registry.yml <<YAML
version: 0.1
log: { level: warn }
storage: { filesystem: { rootdirectory: $work/upstream } }
http: { addr: 127.0.0.1:$upstream_port, secret: demo }
auth: { htpasswd: { realm: upstream, path: $work/htpasswd } }
YAML
docker-registry serve registry.yml > registry.log 2>&1 &
registry_pid=$!
trap 'kill $registry_pid ${berth_pid:-} 2>/dev/null || true' EXIT
up=""
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$upstream_port/v2/ && up=1 && break; sleep 0.1; done
[ -n "$up" ] || { cat registry.log >&2; die "docker-registry did not start on port $upstream_port (its log is above)"; }

# 2. A small OCI image (one layer holding a text file), pushed into the upstream.
python3 - <<'PY'
import hashlib, io, json, os, tarfile
os.makedirs("image/blobs/sha256", exist_ok=True)
def put(b):
    d = hashlib.sha256(b).hexdigest()
    open(f"image/blobs/sha256/{d}", "wb").write(b)
    return "sha256:" + d, len(b)
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    data = b"hello from the vendor\n"
    info = tarfile.TarInfo("hello.txt"); info.size = len(data)
    t.addfile(info, io.BytesIO(data))
layer, lsize = put(buf.getvalue())
cfg, csize = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": [layer]}}).encode())
man, msize = put(json.dumps({"schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": csize},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": lsize}]}).encode())
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": man, "size": msize, "annotations": {"org.opencontainers.image.ref.name": "1.2"}}]},
    open("image/index.json", "w"))
open("image/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
skopeo copy -q --preserve-digests --dest-tls-verify=false --dest-creds "vendor:$UPSTREAM_PASSWORD" \
  oci:image:1.2 docker://127.0.0.1:$upstream_port/acme/api:1.2

# 3. berth in front of it, with one app; the customer's license is issued at runtime.
cat > berth.yaml <<YAML
server: { listen: 127.0.0.1:$berth_port, hostname: "127.0.0.1:$berth_port" }
cache: { dir: $work/cache }
upstreams:
  - { name: acme-registry, url: "http://127.0.0.1:$upstream_port", host: registry.acme.test,
      username: vendor, password: "\${UPSTREAM_PASSWORD}", repositories: ["acme/*"] }
apps: [ { slug: acme, upstreams: [acme-registry] } ]
YAML
"$bin" check-config --config berth.yaml
"$bin" serve --config berth.yaml &
berth_pid=$!
up=""
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:$berth_port/v2/ && up=1 && break; sleep 0.1; done
[ -n "$up" ] || die "berth did not start on port $berth_port"

# 4. The vendor issues a license (kept in berth's SQLite state, in force on the running
#    server within a second); its secret is printed once, here.
"$bin" license create --config berth.yaml --app acme --customer "Demo Customer" --expires 30d --json > license.json
lic_id=$(python3 -c 'import json; print(json.load(open("license.json"))["id"])')
lic_secret=$(python3 -c 'import json; print(json.load(open("license.json"))["secret"])')
sleep 1

# 5. The customer's pull, with nothing but the license.
skopeo copy --src-tls-verify=false --src-creds "$lic_id:$lic_secret" \
  docker://127.0.0.1:$berth_port/proxy/acme/registry.acme.test/acme/api:1.2 oci:pulled:1.2
echo
"$bin" license list --config berth.yaml
echo
echo "Pulled through berth into $work/pulled. berth keeps serving on 127.0.0.1:$berth_port; Ctrl-C to stop."
echo "The license is in $work/license.json. Try: $bin usage --config $work/berth.yaml"
echo "Revoke it with: $bin license revoke --config $work/berth.yaml $lic_id"
wait "$berth_pid"
