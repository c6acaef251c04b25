#!/bin/bash
# A first comparison of `hitless proxy server` with nginx `stream` (ssl_verify_client on) and
# HAProxy `mode tcp` (verify required): same keys (a dev CA from `hitless ca`, ECDSA P-256),
# same plaintext backend (nginx http, one worker, `return 200`), the Go net/http load generator
# of the requests benchmark (go/loadgen), modes new (a full TLS 1.3 handshake per request), h1
# (kept-alive tunnels) and resume13 (TLS 1.3 tickets), ROUNDS interleaved rounds (the order
# rotates), medians of per-round ratios. Everything on 127.0.0.1; load generator and proxies
# share the machine's cores. Not yet part of `hitless-bench` (see docs/proxy.md).
#
# Needs: nginx with libnginx-mod-stream, haproxy, go, python3, curl.
# Usage: HITLESS_BIN=target/release/hitless crates/bench/proxy/compare.sh
# Environment: DUR (per run, default 8s), CONC (workers, default 16), ROUNDS (default 3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
HITLESS_BIN="${HITLESS_BIN:?set HITLESS_BIN to a release build of hitless}"
DUR="${DUR:-8s}" CONC="${CONC:-16}" ROUNDS="${ROUNDS:-3}"
stream_module=/usr/lib/nginx/modules/ngx_stream_module.so
for tool in nginx haproxy go python3 curl; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
[[ -f $stream_module ]] || { echo "nginx stream module missing (apt install libnginx-mod-stream)" >&2; exit 1; }
work="$(mktemp -d "${TMPDIR:-/tmp}/hitless-proxy-compare.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ "${KEEP:-}" == 1 ]] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
mkdir logs
(cd "$here/../go" && GOFLAGS=-mod=mod go build -o "$work/loadgen" ./loadgen)
"$HITLESS_BIN" ca init --dir pki 2>/dev/null
"$HITLESS_BIN" ca issue --dir pki --name localhost --out . 2>/dev/null
"$HITLESS_BIN" ca issue --dir pki --name client --kind client --out . 2>/dev/null
cat localhost.crt localhost.key >localhost.combined.pem
read -r backend hitless_port stream_port haproxy_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(4)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
cat >backend.conf <<CONF
worker_processes 1;
pid $work/logs/backend.pid;
error_log $work/logs/backend.err;
daemon off;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/logs; proxy_temp_path $work/logs; fastcgi_temp_path $work/logs;
  uwsgi_temp_path $work/logs; scgi_temp_path $work/logs;
  server { listen 127.0.0.1:$backend backlog=4096; keepalive_requests 1000000;
           location / { return 200 "ok\n"; } }
}
CONF
cat >stream.conf <<CONF
load_module $stream_module;
worker_processes 2;
pid $work/logs/stream.pid;
error_log $work/logs/stream.err;
daemon off;
events { worker_connections 8192; }
stream {
  server {
    listen 127.0.0.1:$stream_port ssl backlog=4096;
    ssl_certificate $work/localhost.crt;
    ssl_certificate_key $work/localhost.key;
    ssl_client_certificate $work/pki/ca-bundle.pem;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_protocols TLSv1.2 TLSv1.3;
    proxy_pass 127.0.0.1:$backend;
  }
}
CONF
cat >haproxy.cfg <<CONF
global
  nbthread 2
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 127.0.0.1:$haproxy_port ssl crt $work/localhost.combined.pem ca-file $work/pki/ca-bundle.pem verify required
  default_backend b
backend b
  server s 127.0.0.1:$backend
CONF
nginx -c "$work/backend.conf" -p "$work/" & pids+=($!)
nginx -c "$work/stream.conf" -p "$work/" & pids+=($!)
haproxy -f haproxy.cfg -db >logs/haproxy.log 2>&1 & pids+=($!)
RUST_LOG=warn "$HITLESS_BIN" proxy server --listen "127.0.0.1:$hitless_port" \
    --target "127.0.0.1:$backend" --identity localhost.pem --client-ca pki/ca-bundle.pem \
    --allow-all 2>logs/hitless.log & pids+=($!)
sleep 2
declare -A port=([hitless]=$hitless_port [nginx-stream]=$stream_port [haproxy]=$haproxy_port)
for t in "${!port[@]}"; do
    curl -fsS --max-time 5 --cacert pki/ca-bundle.pem --cert client.crt --key client.key \
        --resolve "localhost:${port[$t]}:127.0.0.1" "https://localhost:${port[$t]}/" >/dev/null ||
        { echo "$t does not answer" >&2; exit 1; }
done
: >results.jsonl
for ((round = 1; round <= ROUNDS; round++)); do
    for mode in new h1 resume13; do
        order=(hitless nginx-stream haproxy)
        for ((i = 0; i < (round - 1) % 3; i++)); do order=("${order[@]:1}" "${order[0]}"); done
        for t in "${order[@]}"; do
            ./loadgen -url "https://127.0.0.1:${port[$t]}/" -sni localhost -mode "$mode" \
                -cert client.crt -key client.key -ca pki/ca-bundle.pem -duration "$DUR" \
                -concurrency "$CONC" | python3 -c '
import json, sys
d = json.load(sys.stdin)
lat = d["lat_us"]
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0
print(json.dumps({"target": sys.argv[1], "mode": sys.argv[2], "round": int(sys.argv[3]),
  "rps": round(d["requests"] / d["elapsed_s"], 1), "errors": d["errors"],
  "resumed": d["resumed"], "p50_us": p(0.5), "p99_us": p(0.99)}))' "$t" "$mode" "$round" >>results.jsonl
        done
    done
done
python3 - "$work/results.jsonl" <<'PY'
import collections, json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(list)
for r in rows:
    by[(r["mode"], r["target"])].append(r)
print("mode       target        median req/s  p50 us  p99 us  errors  resumed")
for (mode, t), rs in sorted(by.items()):
    med = lambda k: statistics.median(r[k] for r in rs)
    print(f"{mode:10} {t:13} {med('rps'):12.0f} {med('p50_us'):7.0f} {med('p99_us'):7.0f}"
          f"  {sum(r['errors'] for r in rs):6}  {sum(r['resumed'] for r in rs)}")
for mode in ("new", "h1", "resume13"):
    rounds = collections.defaultdict(dict)
    for r in rows:
        if r["mode"] == mode:
            rounds[r["round"]][r["target"]] = r["rps"]
    for other in ("nginx-stream", "haproxy"):
        ratios = [v["hitless"] / v[other] for v in rounds.values() if v.get(other)]
        if ratios:
            print(f"{mode}: hitless / {other} = {statistics.median(ratios):.2f} "
                  f"(median of {len(ratios)} rounds)")
PY
