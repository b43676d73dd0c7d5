//! The CNI specification versions Sluice speaks, and what each one allows.

use std::fmt;

/// A CNI specification version this plugin accepts in `cniVersion`, ordered oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    /// Every version Sluice accepts, oldest first. 0.1.0 and 0.2.0 lack the result type
    /// with interfaces and are not supported.
    pub const SUPPORTED: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The version this plugin implements; used for VERSION and for errors raised before the
    /// configuration's own version is known.
    pub const NEWEST: CniVersion = CniVersion::V1_1_0;

    pub fn parse(text: &str) -> Option<CniVersion> {
        CniVersion::SUPPORTED
            .into_iter()
            .find(|version| version.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK was introduced in 0.4.0.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// STATUS and GC were introduced in 1.1.0.
    pub fn has_status_and_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// Before 1.0.0 every `ips` entry carries `"version": "4"` or `"6"`.
    pub fn ip_has_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// `interfaces[].mtu` was introduced in 1.1.0.
    pub fn interface_has_mtu(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// `"0.3.0, 0.3.1, ..."`, for messages.
    pub fn supported_list() -> String {
        CniVersion::SUPPORTED
            .iter()
            .map(|version| version.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to VERSION.
pub fn version_answer() -> serde_json::Value {
    serde_json::json!({
        "cniVersion": CniVersion::NEWEST.as_str(),
        "supportedVersions": CniVersion::SUPPORTED.map(CniVersion::as_str),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_the_supported_versions() {
        for version in CniVersion::SUPPORTED {
            assert_eq!(CniVersion::parse(version.as_str()), Some(version));
        }
        for text in ["0.1.0", "0.2.0", "9.9.9", "1.1", "v1.1.0", " 1.1.0", ""] {
            assert_eq!(CniVersion::parse(text), None, "{text}");
        }
    }

    #[test]
    fn features_per_version() {
        use CniVersion::*;
        let rows = [
            // version, check, status+gc, ips[].version, interfaces[].mtu
            (V0_3_0, false, false, true, false),
            (V0_3_1, false, false, true, false),
            (V0_4_0, true, false, true, false),
            (V1_0_0, true, false, false, false),
            (V1_1_0, true, true, false, true),
        ];
        for (version, check, status_gc, ip_version, mtu) in rows {
            assert_eq!(version.has_check(), check, "{version}");
            assert_eq!(version.has_status_and_gc(), status_gc, "{version}");
            assert_eq!(version.ip_has_version(), ip_version, "{version}");
            assert_eq!(version.interface_has_mtu(), mtu, "{version}");
        }
    }

    #[test]
    fn version_answer_lists_every_supported_version() {
        assert_eq!(
            version_answer(),
            serde_json::json!({
                "cniVersion": "1.1.0",
                "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
            })
        );
        assert_eq!(
            CniVersion::supported_list(),
            "0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
        );
    }
}
