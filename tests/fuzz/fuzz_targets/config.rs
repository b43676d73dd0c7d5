//! sluiced's configuration file: arbitrary TOML through `Config::parse`, and a
//! parsed configuration resolved against a fixed uplink.

#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use sluice_control::config::{Config, UplinkFacts};
use sluice_dataplane::wire::MacAddr;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::parse(text) {
        let uplink = UplinkFacts {
            mtu: 1500,
            mac: MacAddr([2, 0, 0xc6, 0x12, 0, 1]),
            ipv4: vec![Ipv4Addr::new(198, 18, 0, 1)],
        };
        let _ = cfg.resolve(&uplink);
    }
});
