#!/usr/bin/env bash
# Checks hearth.conf with Debian's nginx (apt-get install nginx), as an
# unprivileged user and without touching /etc or /var; exits non-zero on any
# failure.
#
#   1. nginx -t -c nginx-test.conf: hearth.conf exactly as installed (this
#      binds port 8080 for the test, so it must be free).
#   2. A live run: nginx with a copy of hearth.conf whose ports and access
#      log are moved under this test (listen 127.0.0.1:$NGINX_PORT, replicas
#      on $REPLICA_PORTS, log to a file), in front of three stand-in
#      replicas (stand_in_replica.py), then requests that check affinity,
#      SSE pass-through, the body limit, /metrics and admin refusal,
#      X-Request-Id, Host, retry and no-retry of POSTs, passive failover.
#
# The stand-ins are not hearth: this checks nginx's side only.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD

NGINX_PORT=${NGINX_PORT:-18080}
REPLICA_PORTS=${REPLICA_PORTS:-"18081 18082 18083"}

command -v nginx >/dev/null || { echo "nginx not found: apt-get install nginx" >&2; exit 2; }
nginx -v

# Unprivileged: as ourselves, or as nobody when run as root.
as_user() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=65534 --regid=65534 --clear-groups "$@"
    else
        "$@"
    fi
}

tmp=$(mktemp -d)
chmod 777 "$tmp"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

echo "== nginx -t -c nginx-test.conf (as $(as_user id -un))"
mkdir -p /tmp/hearth-nginx-test
chmod 777 /tmp/hearth-nginx-test 2>/dev/null || true
as_user nginx -t -c "$here/nginx-test.conf"

echo "== live run: nginx on 127.0.0.1:$NGINX_PORT, stand-in replicas on $REPLICA_PORTS"
read -r p1 p2 p3 <<<"$REPLICA_PORTS"
sed -e "s|^\(\s*\)listen 8080;|\1listen 127.0.0.1:$NGINX_PORT;|" \
    -e "s|127.0.0.1:8081|127.0.0.1:$p1|; s|127.0.0.1:8082|127.0.0.1:$p2|; s|127.0.0.1:8083|127.0.0.1:$p3|" \
    -e "s|access_log syslog:[^ ]* hearth_json;|access_log $tmp/access.json hearth_json;|" \
    hearth.conf >"$tmp/hearth.conf"
sed -e "s|/tmp/hearth-nginx-test|$tmp|g" nginx-test.conf >"$tmp/nginx.conf"
for changed in "listen 127.0.0.1:$NGINX_PORT;" "127.0.0.1:$p3 " "access_log $tmp/access.json"; do
    grep -qF "$changed" "$tmp/hearth.conf" || { echo "could not rewrite hearth.conf for the live run ($changed)" >&2; exit 1; }
done

n=1
for port in $p1 $p2 $p3; do
    python3 stand_in_replica.py "$port" "r$n" &
    pids+=($!)
    n=$((n + 1))
done
# Not through as_user: a backgrounded function is a subshell, and $! would
# be its pid rather than nginx's.
if [ "$(id -u)" = 0 ]; then
    setpriv --reuid=65534 --regid=65534 --clear-groups nginx -c "$tmp/nginx.conf" -g "daemon off;" &
else
    nginx -c "$tmp/nginx.conf" -g "daemon off;" &
fi
pids+=($!)

for _ in $(seq 50); do
    if python3 -c "import socket,sys; [socket.create_connection(('127.0.0.1', int(p)), 0.2).close() for p in sys.argv[1:]]" \
        "$NGINX_PORT" $p1 $p2 $p3 2>/dev/null; then
        break
    fi
    sleep 0.1
done

NGINX_PORT=$NGINX_PORT ACCESS_LOG=$tmp/access.json REPLICA_PIDS="${pids[0]} ${pids[1]} ${pids[2]}" \
    REPLICA_PORTS="$p1 $p2 $p3" python3 - <<'PY'
import http.client, json, os, re, signal, time

port = int(os.environ["NGINX_PORT"])
failures = []

def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)

def request(method, path, body=None, headers=None, key="key-a"):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    h.update(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r, data

def replica(key=None, session=None):
    headers = {"X-Hearth-Session": session} if session else {}
    r, _ = request("GET", "/v1/models", headers=headers, key=key)
    return r.getheader("X-Replica")

# Affinity.
same = {replica("key-a") for _ in range(10)}
check(len(same) == 1, f"one API key always reaches one replica ({same})")
spread = {replica("key-a", session=f"conv-{i}") for i in range(30)}
check(len(spread) >= 2, f"X-Hearth-Session spreads one key's conversations ({sorted(spread)})")
pinned = {replica(k, session="conv-7") for k in ("key-a", "key-b", "key-c")}
check(len(pinned) == 1, "a conversation (X-Hearth-Session) stays on one replica whatever the key")

# Server-sent events arrive as they are sent (the stand-in spaces 4 events
# 0.5 s apart): the first must not wait for the last.
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
start = time.monotonic()
c.request("POST", "/v1/chat/completions", body=json.dumps({"stream": True, "messages": []}),
          headers={"Authorization": "Bearer key-a", "Content-Type": "application/json"})
r = c.getresponse()
arrivals = []
while True:
    line = r.fp.readline()
    if not line:
        break
    if line.startswith(b"data: "):
        arrivals.append((time.monotonic() - start, line.strip()))
        if line.strip() == b"data: [DONE]":
            break
c.close()
check(r.status == 200 and r.getheader("Content-Type") == "text/event-stream", "streamed chat: 200 text/event-stream")
check(len(arrivals) == 5, f"streamed chat: all 5 events ({len(arrivals)})")
if len(arrivals) == 5:
    check(arrivals[0][0] < 0.4 and arrivals[-1][0] > 1.3,
          f"streamed chat: events pass unbuffered (first at {arrivals[0][0]:.2f} s, last at {arrivals[-1][0]:.2f} s)")

# Body limit: hearth's 1 MiB.
r, data = request("POST", "/v1/chat/completions", body=b"x" * (1 << 20), headers={"Content-Type": "application/json"})
check(r.status == 200 and json.loads(data)["body_bytes"] == 1 << 20, "a 1 MiB body reaches a replica")
r, _ = request("POST", "/v1/chat/completions", body=b"x" * ((1 << 20) + 1), headers={"Content-Type": "application/json"})
check(r.status == 413 and r.getheader("X-Replica") is None, "a body of 1 MiB + 1 byte is refused by nginx (413)")

# Not passed through.
for path in ("/metrics", "/metrics?x=1", "//metrics", "/v1/admin/plugins", "/v1/admin/plugins/calc/disable"):
    r, _ = request("GET" if "metrics" in path else "POST", path, body=None if "metrics" in path else {})
    check(r.status == 404 and r.getheader("X-Replica") is None, f"{path} is not passed to hearth ({r.status})")
r, data = request("GET", "/nginx-healthz", key=None)
check(r.status == 200 and data == b"ok\n", "/nginx-healthz answers")
r, _ = request("GET", "/healthz", key=None)
check(r.status == 200 and r.getheader("X-Replica"), "/healthz is passed to a replica")

# Request ids and Host.
r, _ = request("GET", "/v1/models", headers={"X-Request-Id": "client-id-42"})
check(r.getheader("X-Seen-Request-Id") == "client-id-42", "a client's X-Request-Id is forwarded")
r, _ = request("GET", "/v1/models", headers={"X-Request-Id": "bad id with spaces"})
check(re.fullmatch(r"[0-9a-f]{32}", r.getheader("X-Seen-Request-Id") or "") is not None,
      f"otherwise nginx's own id is ({r.getheader('X-Seen-Request-Id')})")
r, _ = request("GET", "/v1/models", headers={"Host": "hearth.example.com"})
check(r.getheader("X-Seen-Host") == "hearth.example.com", "the client's Host is forwarded (for /mcp's host check)")

# Retries. key-r's replica answers 503 ("queue full") when told to.
target = replica("key-r")
r, data = request("POST", "/v1/chat/completions", body={"messages": []}, key="key-r",
                  headers={"X-Test-Busy": target})
check(r.status == 503 and r.getheader("Retry-After") == "1" and r.getheader("X-Replica") == target,
      "a POST its replica answered 503 is not retried; the client gets the 503 and Retry-After")
r, _ = request("GET", "/v1/models", key="key-s", headers={"X-Test-Busy": replica("key-s")})
check(r.status == 200, f"a GET answered 503 is retried on another replica (answered by {r.getheader('X-Replica')})")

# Passive failover: stop key-f's replica; requests, POSTs included (the
# connection is refused, so nothing was sent), go to the next one.
names = {f"r{i + 1}": int(p) for i, p in enumerate(os.environ["REPLICA_PIDS"].split())}
down = replica("key-f")
os.kill(names[down], signal.SIGTERM)
time.sleep(0.3)
r, _ = request("POST", "/v1/chat/completions", body={"messages": []}, key="key-f")
check(r.status == 200 and r.getheader("X-Replica") not in (None, down),
      f"with {down} down, a POST whose connection was refused is retried ({r.getheader('X-Replica')})")
after = {replica("key-f") for _ in range(5)}
check(len(after) == 1 and down not in after, f"and the key stays on one other replica ({after})")

# The access log is JSON with the upstream attempts.
time.sleep(0.2)
lines = [json.loads(l) for l in open(os.environ["ACCESS_LOG"])]
check(len(lines) > 0, f"access log: {len(lines)} JSON lines")
check(any("," in l["upstream_status"] for l in lines), "access log shows retried attempts (upstream_status \"503, 200\")")
check(all(re.fullmatch(r"[A-Za-z0-9._-]{1,64}", l["request_id"]) for l in lines), "access log: every line has a request id")

print(f"{len(failures)} failed" if failures else "nginx: all live checks passed")
raise SystemExit(1 if failures else 0)
PY
