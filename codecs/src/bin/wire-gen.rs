//! Regenerates every file derived from `codecs/src/layout.rs`: the C layout header, the JS layout
//! module, the byte tables in WIRE.md and the golden vectors. `--check` writes nothing and exits
//! non-zero if any file is out of date.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use codecs::{codegen, golden};

/// Every generated file: path relative to the crate, and its wanted contents.
fn outputs(root: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    let mut out = vec![
        (
            root.join("include/telemux_wire_layout.h"),
            codegen::c_layout_header().into_bytes(),
        ),
        (
            root.join("js/layout.mjs"),
            codegen::js_layout().into_bytes(),
        ),
    ];
    let wire_path = root.join("WIRE.md");
    let wire =
        std::fs::read_to_string(&wire_path).map_err(|e| format!("{}: {e}", wire_path.display()))?;
    let spliced = codegen::splice_wire_md(&wire)
        .ok_or_else(|| format!("{}: generated-table markers missing", wire_path.display()))?;
    out.push((wire_path, spliced.into_bytes()));
    let vectors = golden::vectors();
    golden::self_check(&vectors)?;
    let manifest =
        serde_json::to_string_pretty(&golden::manifest(&vectors)).map_err(|e| e.to_string())?;
    out.push((
        root.join("golden/vectors.json"),
        format!("{manifest}\n").into_bytes(),
    ));
    for v in vectors {
        out.push((root.join(format!("golden/{}.bin", v.name)), v.bytes));
    }
    Ok(out)
}

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = match outputs(root) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("wire-gen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = 0;
    for (path, contents) in files {
        let current = std::fs::read(&path).ok();
        if current.as_deref() == Some(&contents[..]) {
            continue;
        }
        stale += 1;
        if check {
            eprintln!("out of date: {}", path.display());
            continue;
        }
        if let Some(dir) = path.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            eprintln!("wire-gen: {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        if let Err(e) = std::fs::write(&path, &contents) {
            eprintln!("wire-gen: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    if check && stale > 0 {
        eprintln!(
            "{stale} generated file(s) out of date: run `cargo run -p codecs --bin wire-gen`"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
