#!/usr/bin/env bash
# End-to-end test of hitless's SPIFFE Workload API source against a real SPIRE server and agent,
# on 127.0.0.1 and unix sockets only. The same scenario as tests/spiffe.rs runs against the fake
# Workload API in CI (`cargo test -p hitless --features spiffe --test spiffe`).
#
#   spire-server (trust domain example.org, sqlite in a temp dir, join_token node attestor)
#   spire-agent  (join token, unix workload attestor, socket in the temp dir)
#   one registration entry: spiffe://example.org/ns/test/web for this uid (unix:uid selector),
#   DNS name localhost, X.509-SVID TTL SVID_TTL seconds (default 20: SPIRE rotates at about
#   half of it).
#   examples/spiffe_mtls (mutual TLS, server and client from the Workload API) runs for
#   RUN_SECONDS (default 90) and must see no failed handshake and at least two SVIDs while:
#     - the agent is stopped for 5 s and started again (the stream breaks and reconnects);
#     - when `spire-server localauthority` exists (SPIRE >= 1.9): the X.509 authority rotates
#       (prepare, activate, taint the old one), so the bundle goes CA1 -> CA1+CA2 and the SVIDs
#       move to CA2.
#
# Usage:  tests/spire/run.sh
# Skips (exit 0, with a message) when spire-server or spire-agent is not on PATH: SPIRE is
# not installable from the package registries this project uses. SPIRE_KEEP_DIR=1 keeps the
# temporary directory (configs, logs) for inspection.
set -euo pipefail
{

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

for bin in spire-server spire-agent; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "skip: $bin is not on PATH (CI runs this scenario against the fake Workload API:" \
            "cargo test -p hitless --features spiffe --test spiffe)"
        exit 0
    fi
done

SVID_TTL="${SVID_TTL:-20}"
RUN_SECONDS="${RUN_SECONDS:-90}"
TD="example.org"
WORKLOAD_ID="spiffe://$TD/ns/test/web"
NODE_ID="spiffe://$TD/host"

dir="$(mktemp -d "${TMPDIR:-/tmp}/hitless-spire.XXXXXX")"
pids=()
cleanup() {
    # Only the processes this script started, by their ids.
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${SPIRE_KEEP_DIR:-}" == 1 ]]; then
        echo "kept $dir"
    else
        rm -rf "$dir"
    fi
}
trap cleanup EXIT

port=$((20000 + RANDOM % 20000))
mkdir -p "$dir/server/data" "$dir/agent/data"
server_sock="$dir/server/api.sock"
agent_sock="$dir/agent/api.sock"

cat >"$dir/server.conf" <<EOF
server {
    bind_address = "127.0.0.1"
    bind_port = "$port"
    socket_path = "$server_sock"
    trust_domain = "$TD"
    data_dir = "$dir/server/data"
    log_level = "INFO"
    ca_ttl = "2h"
    default_x509_svid_ttl = "${SVID_TTL}s"
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "$dir/server/data/datastore.sqlite3"
        }
    }
    KeyManager "memory" {
        plugin_data {}
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
}
EOF

cat >"$dir/agent.conf" <<EOF
agent {
    data_dir = "$dir/agent/data"
    log_level = "INFO"
    server_address = "127.0.0.1"
    server_port = "$port"
    socket_path = "$agent_sock"
    trust_domain = "$TD"
    insecure_bootstrap = true
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "disk" {
        plugin_data {
            directory = "$dir/agent/data"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
EOF

wait_until() { # seconds, description, command...
    local limit=$1 what=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > end)); then
            echo "FAIL: $what (not within ${limit}s)" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "ok: $what"
}

echo "== building the example"
(cd "$repo" && cargo build -q -p hitless --features spiffe,tokio --example spiffe_mtls)
example="$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/examples/spiffe_mtls"

echo "== spire-server on 127.0.0.1:$port"
spire-server run -config "$dir/server.conf" >"$dir/server.log" 2>&1 &
pids+=($!)
wait_until 60 "spire-server healthy" spire-server healthcheck -socketPath "$server_sock"

token="$(spire-server token generate -socketPath "$server_sock" -spiffeID "$NODE_ID" | awk '{print $2}')"
spire-server entry create -socketPath "$server_sock" -parentID "$NODE_ID" \
    -spiffeID "$WORKLOAD_ID" -selector "unix:uid:$(id -u)" -dns localhost \
    -x509SVIDTTL "$SVID_TTL" >/dev/null

start_agent() {
    spire-agent run -config "$dir/agent.conf" "$@" >>"$dir/agent.log" 2>&1 &
    agent_pid=$!
    pids+=("$agent_pid")
    wait_until 60 "spire-agent healthy" spire-agent healthcheck -socketPath "$agent_sock"
}
echo "== spire-agent (join token)"
start_agent -joinToken "$token"
wait_until 60 "an X.509-SVID for $WORKLOAD_ID" \
    bash -c "spire-agent api fetch x509 -socketPath '$agent_sock' | grep -q '$WORKLOAD_ID'"

echo "== examples/spiffe_mtls for ${RUN_SECONDS}s"
SPIFFE_ENDPOINT_SOCKET="unix://$agent_sock" "$example" "$RUN_SECONDS" --expect-rotation \
    >"$dir/example.log" 2>&1 &
example_pid=$!
pids+=("$example_pid")

sleep 15
echo "== the agent stops for 5 s (the stream breaks)"
kill "$agent_pid"
wait "$agent_pid" 2>/dev/null || true
sleep 5
# The agent restarts from its stored SVID (data_dir, disk key manager): no new join token.
start_agent

if spire-server localauthority x509 show -socketPath "$server_sock" >/dev/null 2>&1; then
    echo "== X.509 authority rotation: prepare (bundle CA1+CA2), activate, taint CA1"
    spire-server localauthority x509 prepare -socketPath "$server_sock" >/dev/null
    sleep 10
    spire-server localauthority x509 activate -socketPath "$server_sock" \
        -authorityID "$(spire-server localauthority x509 show -socketPath "$server_sock" -output json |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["prepared"]["authority_id"])')" \
        >/dev/null
    sleep 10
    spire-server localauthority x509 taint -socketPath "$server_sock" \
        -authorityID "$(spire-server localauthority x509 show -socketPath "$server_sock" -output json |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["old"]["authority_id"])')" \
        >/dev/null
else
    echo "note: this SPIRE has no 'localauthority' command: no authority rotation"
fi

status=0
wait "$example_pid" || status=$?
cat "$dir/example.log"
if ((status == 0)); then
    echo "PASS: no failed handshake, SVID rotations served, reconnection after the agent restart"
else
    echo "FAIL: see above (exit $status); logs in $dir (SPIRE_KEEP_DIR=1 keeps them)" >&2
    exit 1
fi

exit 0
}
