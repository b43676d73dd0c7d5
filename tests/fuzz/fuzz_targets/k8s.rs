//! The Kubernetes object loader (`sluicectl apply`, objects stored in the node
//! state): arbitrary text through `parse_documents`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_control::k8s::parse_documents;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(objects) = parse_documents(text) {
            for o in &objects {
                let _ = o.key();
            }
        }
    }
});
