//! The web page in a real browser: `hearth serve` with the default model
//! and the bundled plugins, Debian's Chromium driven by Playwright
//! (`playwright-core`, pinned in `tests/web/package-lock.json`), the tests
//! in `tests/web/*.test.mjs` run by Node's own test runner. Screenshots of
//! each view land in `target/web-screenshots/` (CI keeps them).
//!
//! Needs `node`/`npm` and `/usr/bin/chromium` (`CHROMIUM` to point
//! elsewhere); `.ci/run` installs them.

mod common;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const KEY: &str = "web-test-key";
const ADMIN: &str = "web-admin-key";

/// Kills the server when the test ends, however it ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `npm ci` in `tests/web` when its `node_modules` is missing or older
/// than the lockfile (a file lock keeps two test binaries from racing).
fn node_modules(dir: &Path) {
    let lock =
        std::fs::File::create(Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-node-modules.lock"))
            .unwrap();
    lock.lock().unwrap();
    let stamp = dir.join("node_modules/.package-lock.json");
    let fresh = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if fresh(&stamp).is_some() && fresh(&stamp) >= fresh(&dir.join("package-lock.json")) {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--silent"])
        .current_dir(dir)
        .status()
        .expect("run npm (install Node.js and npm)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

#[test]
fn the_page_works_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tests = root.join("tests/web");
    node_modules(&tests);
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} not found: apt-get install chromium (or set CHROMIUM)"
    );
    let shots = root.join("target/web-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();

    let home = tempfile::tempdir().unwrap();
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--api-key",
                KEY,
                "--admin-key",
                ADMIN,
                "--model",
            ])
            .arg(common::default_model())
            .env("HEARTH_HOME", home.path())
            .env_remove("HEARTH_LOG")
            .env_remove("HEARTH_WEB_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = BufReader::new(server.0.stderr.take().unwrap());
    let (addr_tx, addr_rx) = mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(at) = line.find("http://")
                && line.ends_with("/v1")
            {
                let _ = addr_tx.send(line[at..].trim_end_matches("/v1").to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let url = addr_rx
        .recv_timeout(Duration::from_secs(300))
        .expect("hearth serve logged its address");

    let out = Command::new("node")
        .args(["--test", "--test-concurrency=1"])
        .arg(&tests)
        .current_dir(&root)
        .env("HEARTH_URL", &url)
        .env("HEARTH_API_KEY", KEY)
        .env("HEARTH_ADMIN_KEY", ADMIN)
        .env("HEARTH_SCREENSHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    drop(server);
    let server_log = log.join().unwrap();
    assert!(
        out.status.success(),
        "browser tests failed:\n{report}\nserver log:\n{server_log}"
    );
    let taken = std::fs::read_dir(&shots).unwrap().count();
    assert!(taken >= 3, "{taken} screenshots in {}", shots.display());
}
