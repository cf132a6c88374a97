//! Files generated from the code are current: `make generate` rewrites
//! them (it runs this test with `UPDATE_GENERATED=1`), and CI fails when
//! one is stale.

use std::path::Path;

fn check(path: &str, expected: &str) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        std::fs::write(&file, expected).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        return;
    }
    let actual = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        actual == expected,
        "{path} is stale: run `make generate` and commit the result"
    );
}

#[test]
fn configuration_reference_is_current() {
    check(
        "docs/configuration.md",
        &bedrock_broker::config::reference::markdown(),
    );
}
