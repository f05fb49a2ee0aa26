//! `sprig lottery` end to end on Fashion-MNIST: a start with a bad setting writes nothing (the
//! corrected command then runs in the same `--out`); a run killed with SIGKILL mid-way and resumed
//! ends with the same tickets (weights and masks, bit for bit) and summary as an uninterrupted one.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
mod common;
use common::{json, run_ok, sprig};

const TINY: [&str; 14] = ["lottery", "--rounds", "2", "--rate", "0.5", "--seeds", "1", "--epochs", "1", "--batch-size", "1000", "--rewind", "step:5", "--out"];

fn lottery(out: &Path) -> Command {
    let mut c = sprig();
    c.args(TINY).arg(out);
    c
}

fn hashes(run: &Path) -> Vec<(serde_json::Value, serde_json::Value)> {
    (0..=2)
        .map(|r| {
            let m = json(&run.join(format!("round-{r:02}/seed-0/sprig.json")));
            (m["weights_sha256"].clone(), m["masks_sha256"].clone())
        })
        .collect()
}

#[test]
fn lottery_killed_and_resumed_equals_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));

    // A bad setting is refused before anything is written; the corrected command then runs there.
    let bad = sprig().args(&TINY[..10]).args(["0", "--out"]).arg(&b).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--batch-size"), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(!b.exists(), "a refused start wrote {}", b.display());

    let out = run_ok(&mut lottery(&a));
    assert!(out.contains("wrote"), "{out}");

    // Kill the second run with SIGKILL as soon as round 1's ticket is on disk, then resume it.
    let mut child = lottery(&b).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !b.join("round-01/seed-0/sprig.json").exists() {
        assert!(t0.elapsed() < Duration::from_secs(1200), "round 1 never finished");
        assert!(child.try_wait().unwrap().is_none(), "run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!b.join("round-02/seed-0/sprig.json").exists(), "killed too late to test resuming");
    assert_eq!(json(&b.join("summary.json"))["complete"], false);
    run_ok(&mut lottery(&b));

    let (sa, sb) = (json(&a.join("summary.json")), json(&b.join("summary.json")));
    assert_eq!(sa, sb, "resumed summary differs from the uninterrupted one");
    assert_eq!(sa["complete"], true);
    assert_eq!(hashes(&a), hashes(&b), "ticket weights or masks differ");
    for r in 1..=2 {
        for c in ["reinit", "random_mask"] {
            let f = format!("round-{r:02}/seed-0/control-{c}.json");
            assert_eq!(json(&a.join(&f))["metrics"]["test_acc"], json(&b.join(&f))["metrics"]["test_acc"], "{f}");
        }
    }
    // `sprig inspect` reads a ticket of the new layout.
    let i = run_ok(sprig().arg("inspect").arg(a.join("round-02/seed-0")));
    assert!(i.contains("imp-magnitude-layerwise"), "{i}");
}
