//! Helpers shared by the end-to-end tests: run the `sprig` binary and read its JSON files.
#![allow(dead_code)] // each test file uses a subset
use std::path::Path;
use std::process::Command;

pub fn sprig() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sprig"))
}

/// Runs `cmd`, asserts success and returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn sprig");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Runs `cmd`, asserts failure and returns its stderr.
pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn sprig");
    assert!(!out.status.success(), "{cmd:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

pub fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}
