//! Kubernetes label selectors: `matchLabels` and `matchExpressions` (In,
//! NotIn, Exists, DoesNotExist), all ANDed; an empty selector selects
//! everything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

/// A parsed label selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

/// A selector Kubernetes would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(
        "selector operator {operator:?} on key {key:?}: expected In, NotIn, Exists or DoesNotExist"
    )]
    Operator { key: String, operator: String },
    #[error("selector operator {operator} on key {key:?} takes no values, got {values:?}")]
    UnexpectedValues {
        key: String,
        operator: &'static str,
        values: Vec<String>,
    },
}

impl Selector {
    /// Selects everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn parse(s: &LabelSelector) -> Result<Selector, SelectorError> {
        let mut reqs = Vec::new();
        for (k, v) in s.match_labels.iter().flatten() {
            reqs.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for e in s.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let no_values = |operator: &'static str| {
                if values.is_empty() {
                    Ok(())
                } else {
                    Err(SelectorError::UnexpectedValues {
                        key: e.key.clone(),
                        operator,
                        values: values.clone(),
                    })
                }
            };
            reqs.push(match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => {
                    no_values("Exists")?;
                    Requirement::Exists(e.key.clone())
                }
                "DoesNotExist" => {
                    no_values("DoesNotExist")?;
                    Requirement::DoesNotExist(e.key.clone())
                }
                other => {
                    return Err(SelectorError::Operator {
                        key: e.key.clone(),
                        operator: other.to_owned(),
                    })
                }
            });
        }
        Ok(Selector { reqs })
    }

    /// A missing selector selects everything, as an empty one does.
    pub fn parse_opt(s: Option<&LabelSelector>) -> Result<Selector, SelectorError> {
        s.map_or(Ok(Selector::everything()), Selector::parse)
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reqs.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(v: serde_json::Value) -> Result<Selector, SelectorError> {
        Selector::parse(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn operators() {
        let s = sel(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "team", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ]
        }))
        .unwrap();
        let ok = labels(&[("app", "web"), ("tier", "a"), ("team", "x")]);
        assert!(s.matches(&ok));
        let mut l = ok.clone();
        l.insert("env".into(), "prod".into());
        assert!(!s.matches(&l));
        l.insert("env".into(), "dev".into());
        assert!(s.matches(&l));
        l.insert("legacy".into(), "".into());
        assert!(!s.matches(&l));
        let mut l = ok.clone();
        l.remove("team");
        assert!(!s.matches(&l));
        let mut l = ok.clone();
        l.insert("tier".into(), "c".into());
        assert!(!s.matches(&l));
        assert!(Selector::everything().matches(&Labels::new()));
        assert_eq!(
            s.to_string(),
            "app=web,tier in (a,b),env notin (prod),team,!legacy"
        );
    }

    #[test]
    fn refuses_bad_operators() {
        assert_eq!(
            sel(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Equals"}]})),
            Err(SelectorError::Operator {
                key: "a".into(),
                operator: "Equals".into()
            })
        );
        assert!(matches!(
            sel(
                serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})
            ),
            Err(SelectorError::UnexpectedValues { .. })
        ));
        assert!(Selector::parse_opt(None).unwrap().is_everything());
    }
}
