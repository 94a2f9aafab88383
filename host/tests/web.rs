//! The web page in a real browser: `hearth serve` with the default model
//! and the bundled plugins, Debian's Chromium driven by Playwright
//! (`playwright-core`, pinned in `tests/web/package-lock.json`), the tests
//! in `tests/web/*.test.mjs` run by Node's own test runner. Screenshots of
//! each view land in `target/web-screenshots/` (CI keeps them).
//!
//! Needs `node`/`npm` and `/usr/bin/chromium` (`CHROMIUM` to point
//! elsewhere); `.ci/run` installs them.

mod common;
use std::path::Path;
use std::process::Command;

const KEY: &str = "web-test-key";
const ADMIN: &str = "web-admin-key";

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
    let server = common::Serve::start(home.path(), &["--api-key", KEY, "--admin-key", ADMIN]);
    let url = server.base.clone();

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
    assert!(
        out.status.success(),
        "browser tests failed:\n{report}\nserver log:\n{}",
        server.log()
    );
    let taken = std::fs::read_dir(&shots).unwrap().count();
    assert!(taken >= 3, "{taken} screenshots in {}", shots.display());
}
