//! The official `openai` Python package against a live `hearth serve`:
//! chat, streaming, tool calls and errors parsed by a client we did not
//! write. The package is installed once into a virtualenv in the build
//! folder (pip, pinned version).
//!
//! Drives the `hearth` binary, like every test in `host/tests/`;
//! library-level tests are modules of `tests/it/` (see `tests/README.md`).

mod common;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const OPENAI: &str = "openai==3.57.0";

fn venv_python() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    let python = root.join("bin/python");
    let ready = root.join(".installed");
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(OPENAI) {
        let python3 = std::env::var("HEARTH_PYTHON").unwrap_or_else(|_| "python3".into());
        let ok = Command::new(&python3)
            .args(["-m", "venv"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(ok.success(), "creating a virtualenv with {python3}");
        let out = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                OPENAI,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pip install {OPENAI}: {}",
            common::text(&out.stderr)
        );
        std::fs::write(&ready, OPENAI).unwrap();
    }
    python
}

#[test]
fn the_official_python_client_chats_streams_and_calls_tools() {
    let python = venv_python();
    let home = tempfile::tempdir().unwrap();
    let model = common::default_model();
    let mut server = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--api-key",
            "py-key",
            "--model",
        ])
        .arg(&model)
        .env("HEARTH_HOME", home.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    let url = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "hearth serve exited"
        );
        if let Some(at) = line.find("http://") {
            break line[at..].trim().to_string();
        }
    };
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/python/openai_client.py"
        ))
        .env("OPENAI_BASE_URL", &url)
        .env("OPENAI_API_KEY", "py-key")
        .output()
        .unwrap();
    // hearth's own client, against the same server.
    let run = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "run",
            "--url",
            &url,
            "--api-key",
            "py-key",
            "--temperature",
            "0",
            "--max-tokens",
            "40",
            "What is the capital of France?",
        ])
        .env("HEARTH_HOME", home.path())
        .output()
        .unwrap();
    // The assistant in this process, with the bundled plugins: the
    // calculator call is forced (the small default model rarely picks a
    // tool by itself) and shown with its result.
    let calculator = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "run",
            "--model",
            model.to_str().unwrap(),
            "--tool-choice",
            "calc.eval",
            "--temperature",
            "0",
            "--max-tokens",
            "40",
            "Use the calculator: what is 12345*6789?",
        ])
        .env("HEARTH_HOME", home.path())
        .output()
        .unwrap();
    let wrong_key = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["run", "--url", &url, "--api-key", "nope", "Hi"])
        .env("HEARTH_HOME", home.path())
        .output()
        .unwrap();
    // SIGTERM: the server stops gracefully and exits 0.
    terminate(server.id());
    let status = server.wait().unwrap();
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    assert_eq!(common::text(&out.stdout).trim(), "ok");
    assert!(status.success(), "hearth serve exited with {status}");
    assert!(run.status.success(), "{}", common::text(&run.stderr));
    assert!(
        common::text(&run.stdout).contains("Paris"),
        "{}",
        common::text(&run.stdout)
    );
    let shown = common::text(&calculator.stderr);
    assert!(calculator.status.success(), "{shown}");
    assert!(
        shown.contains("[tool] calc.eval {\"expression\""),
        "{shown}"
    );
    assert!(shown.contains("83810205"), "{shown}");
    assert!(!wrong_key.status.success());
    assert!(
        common::text(&wrong_key.stderr).contains("401 Unauthorized: invalid API key"),
        "{}",
        common::text(&wrong_key.stderr)
    );
}

fn terminate(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}
