//! hearth as an operator runs it on one host (deploy/README.md): three
//! `hearth serve` replicas sharing a data directory, their plugins'
//! key-value data on a real `redis-server`, behind Debian's nginx with the
//! checked-in `deploy/nginx/hearth.conf` (only its ports and log target
//! changed). A load of streaming chats and plugin calls runs through nginx
//! while one replica is killed outright and another is stopped with
//! SIGTERM and started again: only requests in flight on the killed one may
//! fail, and every other answer is complete.
//!
//! Needs `nginx` and `redis-server` (Debian's packages; `.ci/run` installs
//! them).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "replica-test-key";
const ADMIN: &str = "replica-admin-key";

/// A child process, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx, stopped with SIGTERM: its master then stops its workers, which
/// a SIGKILL to the master would leave running.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Checks a program is installed, naming the package that has it.
fn need(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{program} is not installed: this test runs Debian's {package} (apt-get install {package})"
    );
}

/// One request with `Connection: close`: (status, head, body). A status
/// of 0 means no complete status line arrived.
fn http(port: u16, request_line: &str, headers: &str, body: &str) -> (u16, String, String) {
    http_as(KEY, port, request_line, headers, body)
}

/// [`http`] with another key.
fn http_as(
    key: &str,
    port: u16,
    request_line: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, "connection refused".into(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let _ = write!(
        s,
        "{request_line}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// A replica: `hearth serve` on `port`, its log in `log`.
fn start_replica(home: &Path, port: u16, redis: &str, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--model")
        .arg(common::default_model())
        .args(["--api-key", KEY, "--admin-key", ADMIN, "--kv", redis])
        .args(["--parallel", "2", "--shutdown-grace", "30"])
        .env("HEARTH_HOME", home)
        .env_remove("HEARTH_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let child = Child(child);
    wait_ready(port);
    child
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if http(port, "GET /readyz HTTP/1.1", "", "").0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "replica on {port} never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// deploy/nginx/hearth.conf with the test's ports and a log file: every
/// substitution must apply, so a change to the checked-in file that this
/// test no longer matches fails here rather than testing something else.
fn nginx_conf(dir: &Path, listen: u16, replicas: &[u16]) -> PathBuf {
    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/hearth.conf");
    let mut conf = std::fs::read_to_string(&checked_in).unwrap();
    let mut swap = |from: &str, to: &str| {
        assert_eq!(conf.matches(from).count(), 1, "{from} in hearth.conf");
        conf = conf.replace(from, to);
    };
    swap("listen 8080;", &format!("listen 127.0.0.1:{listen};"));
    for (i, port) in replicas.iter().enumerate() {
        swap(
            &format!("server 127.0.0.1:808{} ", i + 1),
            &format!("server 127.0.0.1:{port} "),
        );
    }
    swap(
        "access_log syslog:server=unix:/dev/log,tag=hearth_nginx,nohostname hearth_json;",
        &format!("access_log {}/access.log hearth_json;", dir.display()),
    );
    let site = dir.join("hearth.conf");
    std::fs::write(&site, conf).unwrap();
    let d = dir.display();
    let main = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n\
           include {};\n}}\n",
        site.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, main).unwrap();
    path
}

/// What one request of the load came to.
struct Outcome {
    started: Instant,
    ended: Instant,
    what: &'static str,
    failure: Option<String>,
}

/// A streamed chat through nginx, complete only with its last event and
/// `[DONE]`.
fn streamed_chat(port: u16, session: &str) -> Option<String> {
    let body = r#"{"messages":[{"role":"user","content":"Name a colour."}],"stream":true,"max_tokens":12,"temperature":0}"#;
    let (status, head, text) = http(
        port,
        "POST /v1/chat/completions HTTP/1.1",
        &format!("X-Hearth-Session: {session}\r\n"),
        body,
    );
    if status != 200 {
        return Some(format!("status {status}: {head} {text}"));
    }
    if !text.contains("data: [DONE]") || !text.contains("\"finish_reason\":") {
        return Some(format!("an incomplete stream: {text:?}"));
    }
    None
}

fn plugin_call(port: u16, session: &str) -> Option<String> {
    let (status, head, text) = http(
        port,
        "POST /v1/plugins/calc/eval HTTP/1.1",
        &format!("X-Hearth-Session: {session}\r\n"),
        r#"{"expression":"6*7"}"#,
    );
    (status != 200 || !text.contains("42")).then(|| format!("status {status}: {head} {text}"))
}

/// `hearth_requests_total` for a route and status on one replica.
fn requests(port: u16, route: &str) -> u64 {
    let (_, _, metrics) = http(port, "GET /metrics HTTP/1.1", "", "");
    let line = format!("hearth_requests_total{{route=\"{route}\",status=\"200\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[test]
fn three_replicas_behind_nginx_survive_a_kill_and_a_rolling_restart() {
    need("nginx", "nginx");
    need("redis-server", "redis-server");
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    // nginx's workers may run as another user than the test.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let home = run.join("home");
    std::fs::create_dir_all(&home).unwrap();

    let redis_port = free_port();
    let _redis = Child(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(run)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let redis = format!("redis://127.0.0.1:{redis_port}/0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", redis_port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let ports = [free_port(), free_port(), free_port()];
    let log = |i: usize| run.join(format!("replica-{i}.log"));
    // The first start writes the weight image the others then map.
    let mut replicas: Vec<Option<Child>> =
        vec![Some(start_replica(&home, ports[0], &redis, &log(0)))];
    for (i, port) in ports.iter().enumerate().skip(1) {
        replicas.push(Some(start_replica(&home, *port, &redis, &log(i))));
    }

    let listen = free_port();
    let conf = nginx_conf(run, listen, &ports);
    let check = Command::new("nginx")
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", common::text(&check.stderr));
    let _nginx = Nginx(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(listen, "GET /nginx-healthz HTTP/1.1", "", "").0 != 200 {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Plugin state is shared: a note saved through one replica is read
    // through another.
    let (status, _, saved) = http(
        ports[0],
        "POST /v1/plugins/notes/save HTTP/1.1",
        "",
        r#"{"text":"shared through redis"}"#,
    );
    assert_eq!(status, 200, "{saved}");
    let id = serde_json::from_str::<serde_json::Value>(&saved).unwrap()["id"].clone();
    let (status, _, note) = http(
        ports[2],
        "POST /v1/plugins/notes/get HTTP/1.1",
        "",
        &format!(r#"{{"id":{id}}}"#),
    );
    assert_eq!(status, 200, "{note}");
    assert!(note.contains("shared through redis"), "{note}");

    // A conversation's requests (one session) go to one replica, so its
    // prompt prefix stays cached there.
    let before: Vec<u64> = ports.iter().map(|p| requests(*p, "/v1/models")).collect();
    for _ in 0..6 {
        let (status, _, body) = http(
            listen,
            "GET /v1/models HTTP/1.1",
            "X-Hearth-Session: one-conversation\r\n",
            "",
        );
        assert_eq!(status, 200, "{body}");
    }
    let after: Vec<u64> = ports.iter().map(|p| requests(*p, "/v1/models")).collect();
    let moved: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        moved.contains(&6) && moved.iter().sum::<u64>() == 6,
        "{moved:?}"
    );

    // A change made through one replica's admin routes reaches the others
    // (they share the data directory and follow its installed set).
    let listed = |port: u16| http(port, "GET /v1/plugins HTTP/1.1", "", "").2;
    assert!(listed(ports[1]).contains("\"weather\""));
    let (status, _, body) = http_as(
        ADMIN,
        ports[0],
        "POST /v1/admin/plugins/weather/disable HTTP/1.1",
        "",
        "",
    );
    assert!(status == 200, "disable: {status} {body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while listed(ports[1]).contains("\"weather\"") {
        assert!(Instant::now() < deadline, "replica 2 still lists weather");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The load: streamed chats and plugin calls from six clients, each its
    // own conversation, through nginx.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (stop, outcomes) = (stop.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let session = format!("client-{c}");
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let (what, failure) = if i % 2 == 0 {
                        ("chat", streamed_chat(listen, &session))
                    } else {
                        ("plugin call", plugin_call(listen, &session))
                    };
                    outcomes.lock().unwrap().push(Outcome {
                        started,
                        ended: Instant::now(),
                        what,
                        failure,
                    });
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    // Replica 1 dies at once (SIGKILL): what it was answering may fail.
    let killed_at = Instant::now();
    drop(replicas[0].take());
    // Dying takes a moment (the kernel closes its sockets as the process
    // exits): a request that reached it meanwhile was in flight on it too.
    let dead_at = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    // Replica 2 is restarted as a rollout does it: SIGTERM, wait for it to
    // drain and exit, start it again. Nothing it had received may fail.
    let termed_at = Instant::now();
    let mut second = replicas[1].take().unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &second.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exited = second.0.wait().unwrap();
    assert!(exited.success(), "replica 2 exited with {exited}");
    replicas[1] = Some(start_replica(
        &home,
        ports[1],
        &redis,
        &run.join("replica-1-again.log"),
    ));
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    let outcomes = outcomes.lock().unwrap();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    let count = |what: &str| outcomes.iter().filter(|o| o.what == what).count();
    eprintln!(
        "load: {} requests ({} chats, {} plugin calls), {} completed, {} failed",
        outcomes.len(),
        count("chat"),
        count("plugin call"),
        outcomes.len() - failed.len(),
        failed.len()
    );
    let at = |t: Instant, from: Instant| {
        if t >= from {
            (t - from).as_secs_f64()
        } else {
            -(from - t).as_secs_f64()
        }
    };
    for f in &failed {
        eprintln!(
            "  failed {} ({:.3}..{:.3} s from the kill, {:.3}..{:.3} s from SIGTERM): {}",
            f.what,
            at(f.started, killed_at),
            at(f.ended, killed_at),
            at(f.started, termed_at),
            at(f.ended, termed_at),
            f.failure
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    assert!(
        count("chat") >= 10 && count("plugin call") >= 10,
        "too little load to judge"
    );
    // Only requests in flight while replica 1 was being killed failed: one
    // per client at most, each started before it was dead and ended after
    // the signal.
    assert!(failed.len() <= 6, "{} failures", failed.len());
    eprintln!(
        "the kill took {:.1} ms",
        (dead_at - killed_at).as_secs_f64() * 1e3
    );
    for f in &failed {
        assert!(
            f.started <= dead_at && f.ended >= killed_at,
            "a {} failed that was not in flight at the kill: {:?}",
            f.what,
            f.failure
        );
    }
    // Both surviving replicas and the restarted one answer.
    for port in &ports[1..] {
        assert_eq!(http(*port, "GET /readyz HTTP/1.1", "", "").0, 200);
    }
}
