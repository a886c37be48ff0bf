//! The example that opens the README runs as written: its first `sh` block, minus the
//! `cargo install` line, as one shell script against the binary under test.

use std::process::Command;

#[test]
fn readme_example_runs() {
    let readme = include_str!("../README.md");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README opens with an sh block");
    let script: String = block
        .lines()
        .filter(|line| !line.starts_with("cargo install"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(script.contains("idlevit "), "{script}");

    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_idlevit"));
    let bin_dir = binary.parent().expect("the binary has a folder");
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH joins");
    let dir = tempfile::Builder::new()
        .prefix("idlevit-readme-")
        .tempdir()
        .expect("temp dir");
    let out = Command::new("sh")
        .arg("-ec")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .output()
        .expect("sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("GMACs"), "{stdout}");
}
