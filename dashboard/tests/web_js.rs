//! The web dashboard's pure modules under Node (`node --test web/test/*.test.mjs`): the chart's
//! ring buffer and the reconnect backoff. The page as a whole is tested in Chromium by
//! `ingest/tests/browser.rs`. Needs Node.js >= 20 on PATH (`NODE=/path/to/node` to choose).

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn web_modules_pass_their_node_tests() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let dir = web.join("test");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no tests in {}", dir.display());
    let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
    let out = Command::new(&node)
        .arg("--test")
        .args(&files)
        .current_dir(&web)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}): these tests need Node.js >= 20 on PATH (or NODE=/path/to/node)",
                node.to_string_lossy()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in stdout.lines().filter(|l| l.starts_with("# ")) {
        println!("{line}");
    }
}
