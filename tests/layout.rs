//! The repository promises these entry points to its users (README, CI).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[test]
fn scripts_are_executable() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for s in ["scripts/test", ".ci/run"] {
        let meta = std::fs::metadata(root.join(s)).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(
            meta.permissions().mode() & 0o111 != 0,
            "{s} is not executable"
        );
    }
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.contains("scripts/test"),
        ".ci/run must call scripts/test"
    );
}
