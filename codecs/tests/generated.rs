//! The files derived from `src/layout.rs` are current: if this fails, run
//! `cargo run -p codecs --bin wire-gen` and commit the result.

use std::path::Path;

use codecs::{codegen, golden};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn assert_current(rel: &str, wanted: &[u8]) {
    let path = root().join(rel);
    let current = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        current == wanted,
        "{rel} is out of date with src/layout.rs: run `cargo run -p codecs --bin wire-gen`"
    );
}

#[test]
fn c_layout_header_is_generated_from_layout() {
    assert_current(
        "include/telemux_wire_layout.h",
        codegen::c_layout_header().as_bytes(),
    );
}

#[test]
fn js_layout_is_generated_from_layout() {
    assert_current("js/layout.mjs", codegen::js_layout().as_bytes());
}

#[test]
fn wire_md_tables_are_generated_from_layout() {
    let path = root().join("WIRE.md");
    let current = std::fs::read_to_string(&path).expect("read WIRE.md");
    let spliced =
        codegen::splice_wire_md(&current).expect("WIRE.md has the generated-table markers");
    assert!(
        current == spliced,
        "WIRE.md tables are out of date: run `cargo run -p codecs --bin wire-gen`"
    );
}

#[test]
fn golden_vectors_are_generated_and_agree_with_the_decoder() {
    let vectors = golden::vectors();
    golden::self_check(&vectors).expect("decoder agrees with every golden expectation");
    for v in &vectors {
        assert_current(&format!("golden/{}.bin", v.name), &v.bytes);
    }
    let manifest =
        serde_json::to_string_pretty(&golden::manifest(&vectors)).expect("manifest serializes");
    assert_current("golden/vectors.json", format!("{manifest}\n").as_bytes());
}

#[test]
fn every_reason_code_has_an_invalid_golden_vector() {
    let vectors = golden::vectors();
    for reason in codecs::Reason::ALL {
        // Server-side refusals (device mismatch, too-old sequence, rate limit) are decided by the
        // server, not the decoder, so they have no decoder vector.
        if reason.wire() >= 32 {
            continue;
        }
        assert!(
            vectors.iter().any(|v| v.expect["reason"] == reason.name()),
            "no golden vector for {reason:?}"
        );
    }
}

#[test]
fn reason_names_match_generated_constant_names() {
    for reason in codecs::Reason::ALL {
        let generated = codegen::screaming_snake(&format!("{reason:?}")).to_ascii_lowercase();
        assert_eq!(reason.name(), generated);
    }
}
