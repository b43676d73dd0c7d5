//! CNI results: the ADD result in the shape each specification version defines, and the
//! `prevResult` that runtimes hand back on CHECK and DEL.
//!
//! Fields per version (SPEC.md of each release):
//!
//! | field                | 0.3.0 / 0.3.1 / 0.4.0 | 1.0.0 | 1.1.0 |
//! |----------------------|-----------------------|-------|-------|
//! | `interfaces[].mtu`   | -                     | -     | yes   |
//! | `ips[].version`      | required              | -     | -     |
//! | everything else      | same                  | same  | same  |

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_control::api::Attachment;

use crate::error::PluginError;
use crate::version::CniVersion;

/// The `dns` block, the same in every version; Sluice returns what the configuration holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Serialize)]
struct AddResult<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'static str,
    interfaces: [Interface<'a>; 1],
    ips: [IpConfig<'a>; 1],
    routes: Vec<Route<'a>>,
    dns: &'a Dns,
}

#[derive(Serialize)]
struct Interface<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    mac: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    sandbox: &'a str,
}

#[derive(Serialize)]
struct IpConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    address: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    gateway: &'a str,
    interface: usize,
}

#[derive(Serialize)]
struct Route<'a> {
    dst: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gw: Option<&'a str>,
}

/// The ADD result for `attachment`, in `version`'s shape, as the JSON line printed on stdout
/// (keys in the specification's order). The attachment is checked first: a runtime must never
/// be handed an address it cannot parse.
pub fn add_result(
    attachment: &Attachment,
    version: CniVersion,
    dns: &Dns,
) -> Result<Vec<u8>, PluginError> {
    let (address, _) = validate_attachment(attachment)?;
    let result = AddResult {
        cni_version: version.as_str(),
        interfaces: [Interface {
            name: &attachment.ifname,
            mac: &attachment.mac,
            mtu: (version.interface_has_mtu() && attachment.mtu != 0).then_some(attachment.mtu),
            sandbox: &attachment.sandbox,
        }],
        ips: [IpConfig {
            version: version
                .ip_has_version()
                .then_some(if address.is_ipv4() { "4" } else { "6" }),
            address: &attachment.address,
            gateway: &attachment.gateway,
            interface: 0,
        }],
        routes: attachment
            .routes
            .iter()
            .map(|route| Route {
                dst: &route.dst,
                gw: route.gw.as_deref(),
            })
            .collect(),
        dns,
    };
    let mut out = serde_json::to_vec(&result).map_err(|err| PluginError::Protocol {
        reason: format!("cannot encode the ADD result: {err}"),
    })?;
    out.push(b'\n');
    Ok(out)
}

/// Checks every field of the daemon's attachment that ends up in a result.
fn validate_attachment(attachment: &Attachment) -> Result<(IpAddr, u8), PluginError> {
    let bad = |what: &str, value: &str| PluginError::Protocol {
        reason: format!("sluiced returned an attachment whose {what} {value:?} is not valid"),
    };
    if attachment.ifname.is_empty() {
        return Err(bad("interface name", &attachment.ifname));
    }
    if !attachment.mac.is_empty() && !is_mac(&attachment.mac) {
        return Err(bad("MAC address", &attachment.mac));
    }
    let address =
        parse_cidr(&attachment.address).ok_or_else(|| bad("address", &attachment.address))?;
    if !attachment.gateway.is_empty() && attachment.gateway.parse::<IpAddr>().is_err() {
        return Err(bad("gateway", &attachment.gateway));
    }
    for route in &attachment.routes {
        if parse_cidr(&route.dst).is_none() {
            return Err(bad("route destination", &route.dst));
        }
        if let Some(gw) = &route.gw {
            if gw.parse::<IpAddr>().is_err() {
                return Err(bad("route gateway", gw));
            }
        }
    }
    Ok(address)
}

/// `"198.19.1.5/32"` → (address, prefix length).
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = text.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    // u8's parser accepts a leading '+'; a prefix length is digits only.
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn is_mac(text: &str) -> bool {
    let octets: Vec<&str> = text.split(':').collect();
    octets.len() == 6
        && octets
            .iter()
            .all(|octet| octet.len() == 2 && octet.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The parts of a previous result Sluice reads. Unknown fields are allowed: later plugins in a
/// chain may add any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct PrevResult {
    #[serde(default)]
    pub interfaces: Vec<PrevInterface>,
    #[serde(default)]
    pub ips: Vec<PrevIp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PrevInterface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PrevIp {
    pub address: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub interface: Option<usize>,
    /// Present before 1.0.0.
    #[serde(default)]
    pub version: Option<String>,
}

impl PrevResult {
    /// Parses `prevResult` from the network configuration.
    pub fn parse(value: &Value) -> Result<PrevResult, PluginError> {
        let decode = |reason: String| PluginError::Decode {
            what: "prevResult",
            reason,
        };
        if !value.is_object() {
            return Err(decode(format!("expected a JSON object, got {value}")));
        }
        let prev = PrevResult::deserialize(value).map_err(|err| decode(err.to_string()))?;
        for ip in &prev.ips {
            if parse_cidr(&ip.address).is_none() {
                return Err(decode(format!(
                    "ips[].address {:?} is not an address with prefix length",
                    ip.address
                )));
            }
        }
        Ok(prev)
    }

    /// CHECK's view of the previous result: the interface named `ifname` must sit in `netns`
    /// and carry at least one address. Returns those addresses.
    pub fn expect_attachment(
        &self,
        ifname: &str,
        netns: &str,
    ) -> Result<Vec<(IpAddr, u8)>, PluginError> {
        let failed = |msg: String| PluginError::CheckFailed { msg };
        let (index, interface) = self
            .interfaces
            .iter()
            .enumerate()
            .find(|(_, interface)| interface.name == ifname)
            .ok_or_else(|| failed(format!("prevResult has no interface named {ifname:?}")))?;
        let sandbox = interface.sandbox.as_deref().unwrap_or("");
        if sandbox != netns {
            return Err(failed(format!(
                "prevResult interface {ifname:?} has sandbox {sandbox:?}, but CNI_NETNS is {netns:?}"
            )));
        }
        let addresses: Vec<(IpAddr, u8)> = self
            .ips
            .iter()
            .filter(|ip| ip.interface == Some(index))
            .filter_map(|ip| parse_cidr(&ip.address))
            .collect();
        if addresses.is_empty() {
            return Err(failed(format!(
                "prevResult has no address on interface {ifname:?} (interfaces[{index}])"
            )));
        }
        Ok(addresses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_control::api::RouteSpec;

    fn attachment() -> Attachment {
        Attachment {
            ifname: "eth0".into(),
            mac: "02:00:c6:13:01:05".into(),
            mtu: 1450,
            sandbox: "/run/netns/pod-a".into(),
            address: "198.19.1.5/32".into(),
            gateway: "169.254.1.1".into(),
            routes: vec![RouteSpec {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".into()),
            }],
        }
    }

    fn parsed(out: Result<Vec<u8>, PluginError>) -> Value {
        serde_json::from_slice(&out.unwrap()).unwrap()
    }

    fn result_for(version: CniVersion) -> Value {
        parsed(add_result(&attachment(), version, &Dns::default()))
    }

    /// The 0.3.0, 0.3.1 and 0.4.0 shape: `ips[].version`, no `interfaces[].mtu`.
    fn legacy(version: &str) -> Value {
        json!({
            "cniVersion": version,
            "interfaces": [{"name": "eth0", "mac": "02:00:c6:13:01:05",
                            "sandbox": "/run/netns/pod-a"}],
            "ips": [{"version": "4", "address": "198.19.1.5/32", "gateway": "169.254.1.1",
                     "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
            "dns": {}
        })
    }

    #[test]
    fn result_0_3_0() {
        assert_eq!(result_for(CniVersion::V0_3_0), legacy("0.3.0"));
    }

    #[test]
    fn result_0_3_1() {
        assert_eq!(result_for(CniVersion::V0_3_1), legacy("0.3.1"));
    }

    #[test]
    fn result_0_4_0() {
        assert_eq!(result_for(CniVersion::V0_4_0), legacy("0.4.0"));
    }

    #[test]
    fn result_1_0_0() {
        assert_eq!(
            result_for(CniVersion::V1_0_0),
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "02:00:c6:13:01:05",
                                "sandbox": "/run/netns/pod-a"}],
                "ips": [{"address": "198.19.1.5/32", "gateway": "169.254.1.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn result_1_1_0() {
        assert_eq!(
            result_for(CniVersion::V1_1_0),
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [{"name": "eth0", "mac": "02:00:c6:13:01:05", "mtu": 1450,
                                "sandbox": "/run/netns/pod-a"}],
                "ips": [{"address": "198.19.1.5/32", "gateway": "169.254.1.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn result_is_one_line_with_keys_in_spec_order() {
        let out = add_result(&attachment(), CniVersion::V1_1_0, &Dns::default()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("}\n") && text.matches('\n').count() == 1,
            "{text}"
        );
        let at = |key: &str| text.find(&format!("\"{key}\":")).unwrap();
        assert_eq!(at("cniVersion"), 1);
        assert!(at("cniVersion") < at("interfaces"));
        assert!(at("interfaces") < at("ips"));
        assert!(at("ips") < at("routes"));
        assert!(at("routes") < at("dns"));
    }

    #[test]
    fn optional_fields_are_left_out_when_empty() {
        let bare = Attachment {
            mac: String::new(),
            gateway: String::new(),
            mtu: 0,
            routes: vec![RouteSpec {
                dst: "169.254.1.1/32".into(),
                gw: None,
            }],
            ..attachment()
        };
        let value = parsed(add_result(&bare, CniVersion::V1_1_0, &Dns::default()));
        assert_eq!(
            value["interfaces"][0],
            json!({"name": "eth0", "sandbox": "/run/netns/pod-a"})
        );
        assert_eq!(
            value["ips"][0],
            json!({"address": "198.19.1.5/32", "interface": 0})
        );
        assert_eq!(value["routes"], json!([{"dst": "169.254.1.1/32"}]));
    }

    #[test]
    fn ipv6_addresses_say_version_6() {
        let v6 = Attachment {
            address: "fd00:5::5/128".into(),
            gateway: "fe80::1".into(),
            routes: vec![RouteSpec {
                dst: "::/0".into(),
                gw: Some("fe80::1".into()),
            }],
            ..attachment()
        };
        let value = parsed(add_result(&v6, CniVersion::V0_4_0, &Dns::default()));
        assert_eq!(value["ips"][0]["version"], "6");
    }

    #[test]
    fn dns_from_the_configuration_is_returned() {
        let dns = Dns {
            nameservers: vec!["10.96.0.10".into()],
            domain: Some("cluster.local".into()),
            search: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        let value = parsed(add_result(&attachment(), CniVersion::V1_0_0, &dns));
        assert_eq!(
            value["dns"],
            json!({"nameservers": ["10.96.0.10"], "domain": "cluster.local",
                   "search": ["svc.cluster.local"], "options": ["ndots:5"]})
        );
    }

    #[test]
    fn invalid_attachments_are_protocol_errors() {
        let cases: Vec<(Attachment, &str)> = vec![
            (
                Attachment {
                    ifname: String::new(),
                    ..attachment()
                },
                "interface name",
            ),
            (
                Attachment {
                    mac: "02:00:c6".into(),
                    ..attachment()
                },
                "MAC address",
            ),
            (
                Attachment {
                    address: "198.19.1.5".into(),
                    ..attachment()
                },
                "address",
            ),
            (
                Attachment {
                    address: "198.19.1.5/33".into(),
                    ..attachment()
                },
                "address",
            ),
            (
                Attachment {
                    gateway: "gw".into(),
                    ..attachment()
                },
                "gateway",
            ),
            (
                Attachment {
                    routes: vec![RouteSpec {
                        dst: "default".into(),
                        gw: None,
                    }],
                    ..attachment()
                },
                "route destination",
            ),
            (
                Attachment {
                    routes: vec![RouteSpec {
                        dst: "0.0.0.0/0".into(),
                        gw: Some("x".into()),
                    }],
                    ..attachment()
                },
                "route gateway",
            ),
        ];
        for (bad, needle) in cases {
            let err = add_result(&bad, CniVersion::V1_1_0, &Dns::default()).unwrap_err();
            assert_eq!(err.code(), sluice_control::api::code::PROTOCOL);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            parse_cidr("198.19.1.5/32"),
            Some(("198.19.1.5".parse().unwrap(), 32))
        );
        assert_eq!(parse_cidr("::/0"), Some(("::".parse().unwrap(), 0)));
        for bad in [
            "1.2.3.4",
            "1.2.3.4/",
            "1.2.3.4/+3",
            "1.2.3.4/33",
            "::/129",
            "x/1",
            "/1",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }

    #[test]
    fn prev_result_of_every_version_parses() {
        for version in ["0.3.0", "0.3.1", "0.4.0"] {
            let prev = PrevResult::parse(&legacy(version)).unwrap();
            assert_eq!(prev.interfaces[0].name, "eth0");
            assert_eq!(prev.ips[0].version.as_deref(), Some("4"));
        }
        let prev = PrevResult::parse(&result_for(CniVersion::V1_1_0)).unwrap();
        assert_eq!(prev.ips[0].interface, Some(0));
        // Fields from later chained plugins or newer versions are fine.
        let prev = PrevResult::parse(&json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": "/n", "socketPath": "/x", "pciID": ""}],
            "ips": [{"address": "198.19.1.5/32", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "table": 5}],
            "dns": {"nameservers": []},
            "portMappings": []
        }))
        .unwrap();
        assert_eq!(prev.interfaces.len(), 1);
        assert_eq!(
            PrevResult::parse(&json!({})).unwrap(),
            PrevResult::default()
        );
    }

    #[test]
    fn malformed_prev_results_are_decode_errors() {
        for bad in [
            json!([]),
            json!("result"),
            json!({"interfaces": {}}),
            json!({"interfaces": [{"mac": "x"}]}),
            json!({"ips": [{"address": 5}]}),
            json!({"ips": [{"address": "198.19.1.5"}]}),
            json!({"ips": [{"address": "198.19.1.5/32", "interface": -1}]}),
        ] {
            let err = PrevResult::parse(&bad).unwrap_err();
            assert_eq!(err.code(), 6, "{bad}");
            assert!(
                err.to_string().starts_with("prevResult is not valid: "),
                "{err}"
            );
        }
    }

    #[test]
    fn check_finds_the_interface_and_its_addresses() {
        let prev = PrevResult::parse(&legacy("0.4.0")).unwrap();
        assert_eq!(
            prev.expect_attachment("eth0", "/run/netns/pod-a").unwrap(),
            [("198.19.1.5".parse().unwrap(), 32)]
        );
        let cases = [
            ("eth1", "/run/netns/pod-a", "no interface named \"eth1\""),
            (
                "eth0",
                "/run/netns/pod-b",
                "sandbox \"/run/netns/pod-a\", but CNI_NETNS is \"/run/netns/pod-b\"",
            ),
        ];
        for (ifname, netns, needle) in cases {
            let err = prev.expect_attachment(ifname, netns).unwrap_err();
            assert_eq!(err.code(), sluice_control::api::code::CHECK_FAILED);
            assert!(err.to_string().contains(needle), "{err}");
        }
        // An address on another interface does not count.
        let other = PrevResult::parse(&json!({
            "interfaces": [{"name": "host0"}, {"name": "eth0", "sandbox": "/n"}],
            "ips": [{"address": "198.19.1.5/32", "interface": 0}]
        }))
        .unwrap();
        let err = other.expect_attachment("eth0", "/n").unwrap_err();
        assert!(
            err.to_string().contains("no address on interface \"eth0\""),
            "{err}"
        );
    }
}
