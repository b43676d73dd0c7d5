//! `sluicectl policy explain`: why a flow is allowed or denied.
//!
//! Evaluated on the compiler's model of the objects (not on the compiled
//! tables), so it can name the policy and rule that decided: the source's
//! egress side (enforced on the source's node) and the destination's ingress
//! side (enforced on the destination's node).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use sluice_dataplane::policy::Protocol;

use super::model::{Peer, PodInfo, PodKey, PolicyError, PolicyKey, Rule};
use super::Compiler;

/// One end of a flow to explain: a pod or a bare address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Pod(PodKey),
    Ip(Ipv4Addr),
}

impl std::str::FromStr for Target {
    type Err = PolicyError;
    /// `NAMESPACE/POD` or an IPv4 address.
    fn from_str(s: &str) -> Result<Target, PolicyError> {
        match s.parse::<Ipv4Addr>() {
            Ok(ip) => Ok(Target::Ip(ip)),
            Err(_) => s.parse().map(Target::Pod),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pod(k) => write!(f, "{k}"),
            Target::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The rule that allowed a side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub policy: PolicyKey,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Index in the policy's `spec.ingress` / `spec.egress`.
    pub index: usize,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// One side's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// The pod this side is about (`None`: not a known pod, no policy applies).
    pub pod: Option<PodKey>,
    /// Policies selecting that pod for this direction, in key order.
    pub policies: Vec<PolicyKey>,
    /// Selected by at least one of them.
    pub isolated: bool,
    pub allowed: bool,
    /// The first rule (in key and index order) that allowed the flow; `None`
    /// when not isolated or denied.
    pub rule: Option<RuleRef>,
    /// The AdminNetworkPolicy rule that matched first, if any: an `Allow` or
    /// `Deny` there decides the side whatever NetworkPolicy says; a `Pass`
    /// leaves it to NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminRef>,
}

/// An AdminNetworkPolicy rule that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRef {
    pub policy: String,
    pub direction: String,
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Allow, Deny or Pass.
    pub action: String,
}

impl std::fmt::Display for AdminRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AdminNetworkPolicy {} {}[{}]",
            self.policy, self.direction, self.index
        )?;
        if let Some(n) = &self.name {
            write!(f, " ({n})")?;
        }
        write!(f, ": {}", self.action)
    }
}

/// The answer to an explain request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub from: Target,
    pub from_ip: Option<Ipv4Addr>,
    pub to: Target,
    pub to_ip: Option<Ipv4Addr>,
    pub port: u16,
    pub protocol: String,
    /// The source's egress side.
    pub egress: Side,
    /// The destination's ingress side.
    pub ingress: Side,
    pub allowed: bool,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} -> {} {}/{}: {}",
            self.from,
            self.to,
            self.port,
            self.protocol,
            if self.allowed { "ALLOWED" } else { "DENIED" }
        )?;
        for (name, s) in [("egress", &self.egress), ("ingress", &self.ingress)] {
            let who = s.pod.as_ref().map_or("-".to_owned(), |p| p.to_string());
            let verdict = match (&s.rule, s.isolated, s.allowed) {
                _ if s.admin.as_ref().is_some_and(|a| a.action != "Pass") => {
                    let a = s.admin.as_ref().map(|a| a.to_string()).unwrap_or_default();
                    if s.allowed {
                        format!("allowed by {a}")
                    } else {
                        format!("denied by {a}")
                    }
                }
                (_, false, _) => "allowed (not isolated)".to_owned(),
                (Some(r), _, _) => format!("allowed by {r}"),
                (None, true, _) => "denied (isolated, no rule allows it)".to_owned(),
            };
            let pols: Vec<String> = s.policies.iter().map(|p| p.to_string()).collect();
            writeln!(
                f,
                "  {name} of {who}: {verdict}; selecting policies: [{}]",
                pols.join(", ")
            )?;
        }
        Ok(())
    }
}

/// A side of the flow resolved to a pod (when it is one) and an address.
struct End<'a> {
    pod: Option<(&'a PodKey, &'a PodInfo)>,
    ip: Option<Ipv4Addr>,
}

impl Compiler {
    fn end<'a>(&'a self, t: &'a Target) -> End<'a> {
        match t {
            Target::Pod(k) => End {
                pod: self.pods.get_key_value(k),
                ip: self.pod_ip(k),
            },
            Target::Ip(ip) => End {
                pod: self.pod_at(*ip).and_then(|k| self.pods.get_key_value(k)),
                ip: Some(*ip),
            },
        }
    }

    /// Whether `peer` matches the end `e`.
    fn peer_matches(&self, peer: &Peer, e: &End<'_>) -> bool {
        match peer {
            Peer::Pods { namespaces, pods } => e.pod.is_some_and(|(k, p)| {
                e.ip.is_some()
                    && p.active
                    && namespaces.matches(&k.namespace, &self.namespace_labels(&k.namespace))
                    && pods.matches(&p.labels)
            }),
            Peer::Block { cidr, except } => e.ip.is_some_and(|ip| {
                cidr.contains(ip)
                    && !except
                        .iter()
                        .any(|x| cidr.contains_prefix(x) && x.contains(ip))
            }),
            Peer::Nothing => false,
        }
    }

    /// Whether `r` allows the flow to `port`: peers are matched against
    /// `peer`, named ports resolved on the destination `dst`.
    fn rule_allows(&self, r: &Rule, peer: &End<'_>, dst: &End<'_>, proto: u8, port: u16) -> bool {
        let ports_ok = match &r.ports {
            None => true,
            Some(list) => list
                .iter()
                .any(|p| p.matches(dst.pod.map(|(_, info)| info.ports.as_slice()), proto, port)),
        };
        ports_ok
            && match &r.peers {
                None => true,
                Some(peers) => peers.iter().any(|x| self.peer_matches(x, peer)),
            }
    }

    fn side(&self, me: &End<'_>, other: &End<'_>, egress: bool, proto: u8, port: u16) -> Side {
        let Some((key, info)) = me.pod else {
            return Side {
                pod: None,
                policies: Vec::new(),
                isolated: false,
                allowed: true,
                rule: None,
                admin: None,
            };
        };
        let direction = if egress { "egress" } else { "ingress" };
        let dst = if egress { other } else { me };
        let ns_labels = self.namespace_labels(&key.namespace);
        let admin = self
            .admin_in_order()
            .into_iter()
            .filter(|a| a.selects(&ns_labels, &info.labels))
            .find_map(|a| {
                let rules = if egress { &a.egress } else { &a.ingress };
                let i = rules
                    .iter()
                    .position(|r| self.rule_allows(&r.rule, other, dst, proto, port))?;
                Some(AdminRef {
                    policy: a.name.clone(),
                    direction: direction.to_owned(),
                    index: i,
                    name: rules[i].name.clone(),
                    action: rules[i].action.as_str().to_owned(),
                })
            });
        let mut policies = Vec::new();
        let mut rule = None;
        for p in self.policies_in(&key.namespace) {
            if !p.selector.matches(&info.labels) {
                continue;
            }
            let rules = if egress { &p.egress } else { &p.ingress };
            let Some(rules) = rules else { continue };
            policies.push(p.key.clone());
            if rule.is_some() {
                continue;
            }
            let dst = if egress { other } else { me };
            if let Some(i) = rules
                .iter()
                .position(|r| self.rule_allows(r, other, dst, proto, port))
            {
                rule = Some(RuleRef {
                    policy: p.key.clone(),
                    direction: if egress { "egress" } else { "ingress" }.to_owned(),
                    index: i,
                });
            }
        }
        let isolated = !policies.is_empty();
        let allowed = match admin.as_ref().map(|a| a.action.as_str()) {
            Some("Allow") => true,
            Some("Deny") => false,
            _ => !isolated || rule.is_some(),
        };
        Side {
            pod: Some(key.clone()),
            allowed,
            isolated,
            policies,
            rule,
            admin,
        }
    }

    /// Explains a new flow `from -> to` on `port`/`protocol`: the policies
    /// selecting each side, each side's verdict and the rule that decided.
    pub fn explain(
        &self,
        from: &Target,
        to: &Target,
        port: u16,
        protocol: Protocol,
    ) -> Explanation {
        let (f, t) = (self.end(from), self.end(to));
        let proto = protocol.number();
        let egress = self.side(&f, &t, true, proto, port);
        let ingress = self.side(&t, &f, false, proto, port);
        Explanation {
            from: from.clone(),
            from_ip: f.ip,
            to: to.clone(),
            to_ip: t.ip,
            port,
            protocol: protocol.to_string(),
            allowed: egress.allowed && ingress.allowed,
            egress,
            ingress,
        }
    }
}
