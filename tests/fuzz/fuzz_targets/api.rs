//! The API socket's request path as sluiced's server reads it: one frame of at
//! most the request limit, decoded as a `Request`; a decoded request encodes
//! and decodes back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_control::api::{encode, read_frame, Request, Response, MAX_REQUEST};

fuzz_target!(|data: &[u8]| {
    let mut reader = std::io::BufReader::with_capacity(64, data);
    while let Ok(Some(line)) = read_frame(&mut reader, MAX_REQUEST) {
        assert!(line.len() <= MAX_REQUEST);
        if let Ok(req) = serde_json::from_slice::<Request>(&line) {
            let _ = req.op();
            let again = encode(&req);
            let back: Request =
                serde_json::from_slice(again.trim_ascii_end()).expect("an encoded request decodes");
            assert_eq!(back, req, "request round trip");
        }
        // The client side reads answers with the same framing.
        let _ = serde_json::from_slice::<Response>(&line).map(Response::into_result);
    }
});
