//! Reading `ferry --control SOCK status [APP] --json`: the one place that
//! knows its shape (docs/HARNESS.md, "What the harness reads from ferryd").
//!
//! The reader is lenient so that it keeps working while the output grows:
//! unknown fields are ignored, and these shapes are accepted:
//!
//! - a node object `{"node": "n1", "witness": false, "apps": [APP, …]}`
//!   (what `ferryd` prints; `"role": "witness"` also marks a witness), where
//!   `apps` may also be an object keyed by application name;
//! - one application object `APP`, or an array of them.
//!
//! An application object has `app` (or `name`), `role`
//! (`primary|candidate|backup|witness|none`), `epoch`, the sequence numbers
//! either flat (`logged`, `acked`/`acknowledged`, `replayed`, as `ferryd`
//! prints them, or `gseq_…`) or nested (`"gseq": {"logged",
//! "acknowledged", "replayed"}`), `protected` (bool), and optionally the
//! output gate (`"gate_open": bool`, or `"gate": "open"|"closed"`).

use serde_json::{Map, Value};
use thiserror::Error;

/// A node's role for an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// Asking for votes to become primary.
    Candidate,
    Backup,
    Witness,
    None,
    Other(String),
}

impl Role {
    fn parse(s: &str) -> Role {
        match s.to_ascii_lowercase().as_str() {
            "primary" => Role::Primary,
            "candidate" => Role::Candidate,
            "backup" | "replica" => Role::Backup,
            "witness" => Role::Witness,
            "none" | "" => Role::None,
            other => Role::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Role::Primary => "primary",
            Role::Candidate => "candidate",
            Role::Backup => "backup",
            Role::Witness => "witness",
            Role::None => "none",
            Role::Other(s) => s,
        }
    }
}

/// What one node says about one application.
#[derive(Debug, Clone, PartialEq)]
pub struct AppStatus {
    pub name: String,
    pub role: Role,
    pub epoch: u64,
    /// Highest gseq logged, acknowledged by the backups, replayed.
    pub logged: Option<u64>,
    pub acknowledged: Option<u64>,
    pub replayed: Option<u64>,
    pub protected: Option<bool>,
    /// Whether output may leave (the primary's output gate), when reported.
    pub gate_open: Option<bool>,
    /// On a primary, what it knows of each backup, when reported.
    pub backups: Vec<BackupStatus>,
}

/// What a primary says about one of its backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    pub node: String,
    /// Highest gseq it acknowledged.
    pub acked: Option<u64>,
    /// Its log is healthy and in sync.
    pub healthy: Option<bool>,
    /// It answered within the lease.
    pub in_contact: Option<bool>,
}

impl BackupStatus {
    /// Healthy and in contact (a missing field counts as yes).
    pub fn in_sync(&self) -> bool {
        self.healthy != Some(false) && self.in_contact != Some(false)
    }
}

impl AppStatus {
    /// The node says it is the primary and may answer clients: primary,
    /// and its gate is not reported closed.
    pub fn claims_serving(&self) -> bool {
        self.role == Role::Primary && self.gate_open != Some(false)
    }
}

/// What one node says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeStatus {
    pub node: Option<String>,
    /// The node's own role, when it reports one (a witness).
    pub role: Option<Role>,
    pub apps: Vec<AppStatus>,
}

impl NodeStatus {
    /// The status of application `name`.
    pub fn app(&self, name: &str) -> Option<&AppStatus> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// The output was not a status.
#[derive(Debug, Error, PartialEq)]
pub enum StatusError {
    #[error("status output is not JSON: {0}")]
    Json(String),
    #[error("status output has no {0}")]
    Missing(&'static str),
    #[error("status field {field} is {found}, expected {expected}")]
    Type {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
}

/// Parse the output of `ferry status --json`.
pub fn parse(text: &str) -> Result<NodeStatus, StatusError> {
    let v: Value =
        serde_json::from_str(text.trim()).map_err(|e| StatusError::Json(e.to_string()))?;
    match v {
        Value::Array(items) => Ok(NodeStatus {
            node: None,
            role: None,
            apps: items
                .iter()
                .map(|i| app(i, None))
                .collect::<Result<_, _>>()?,
        }),
        // A node object: it lists apps, or it names no application (a
        // witness that runs none).
        Value::Object(ref o)
            if o.contains_key("apps")
                || o.contains_key("applications")
                || !(o.contains_key("name") || o.contains_key("app")) =>
        {
            let node = str_field(o, &["node", "name"]);
            let role = match (str_field(o, &["role"]), bool_field(o, &["witness"])) {
                (Some(r), _) => Some(Role::parse(&r)),
                (None, Some(true)) => Some(Role::Witness),
                (None, _) => None,
            };
            let apps = match o.get("apps").or_else(|| o.get("applications")) {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| app(i, None))
                    .collect::<Result<_, _>>()?,
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(k, i)| app(i, Some(k)))
                    .collect::<Result<_, _>>()?,
                Some(Value::Null) | None => Vec::new(),
                Some(other) => {
                    return Err(StatusError::Type {
                        field: "apps",
                        expected: "an array or an object",
                        found: kind(other).into(),
                    })
                }
            };
            Ok(NodeStatus { node, role, apps })
        }
        Value::Object(ref o) => {
            let a = app(&v, None)?;
            Ok(NodeStatus {
                node: str_field(o, &["node"]),
                role: None,
                apps: vec![a],
            })
        }
        other => Err(StatusError::Type {
            field: "(top level)",
            expected: "an object or an array",
            found: kind(&other).into(),
        }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn str_field(o: &Map<String, Value>, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| o.get(*n).and_then(Value::as_str).map(str::to_owned))
}

fn u64_field(
    o: &Map<String, Value>,
    field: &'static str,
    names: &[&str],
) -> Result<Option<u64>, StatusError> {
    for n in names {
        match o.get(*n) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return v.as_u64().map(Some).ok_or_else(|| StatusError::Type {
                    field,
                    expected: "a non-negative integer",
                    found: v.to_string(),
                })
            }
        }
    }
    Ok(None)
}

fn bool_field(o: &Map<String, Value>, names: &[&str]) -> Option<bool> {
    names
        .iter()
        .find_map(|n| o.get(*n).and_then(Value::as_bool))
}

fn app(v: &Value, key: Option<&String>) -> Result<AppStatus, StatusError> {
    let Value::Object(o) = v else {
        return Err(StatusError::Type {
            field: "app",
            expected: "an object",
            found: kind(v).into(),
        });
    };
    let name = str_field(o, &["name", "app"])
        .or_else(|| key.cloned())
        .ok_or(StatusError::Missing("application name (\"name\")"))?;
    let role = str_field(o, &["role"])
        .map(|r| Role::parse(&r))
        .ok_or(StatusError::Missing("role"))?;
    let epoch = u64_field(o, "epoch", &["epoch"])?.ok_or(StatusError::Missing("epoch"))?;
    let (logged, acknowledged, replayed) = match o.get("gseq") {
        Some(Value::Object(g)) => (
            u64_field(g, "gseq.logged", &["logged"])?,
            u64_field(g, "gseq.acknowledged", &["acknowledged", "acked"])?,
            u64_field(g, "gseq.replayed", &["replayed"])?,
        ),
        _ => (
            u64_field(o, "logged", &["logged", "gseq_logged"])?,
            u64_field(
                o,
                "acknowledged",
                &["acknowledged", "acked", "gseq_acknowledged"],
            )?,
            u64_field(o, "replayed", &["replayed", "gseq_replayed"])?,
        ),
    };
    let gate_open = match o.get("gate") {
        Some(Value::String(s)) => Some(s.eq_ignore_ascii_case("open")),
        Some(Value::Bool(b)) => Some(*b),
        _ => bool_field(o, &["gate_open", "serving"]),
    };
    Ok(AppStatus {
        name,
        role,
        epoch,
        logged,
        acknowledged,
        replayed,
        protected: bool_field(o, &["protected"]),
        gate_open,
        backups: backups(o.get("backups"))?,
    })
}

fn backups(v: Option<&Value>) -> Result<Vec<BackupStatus>, StatusError> {
    let Some(Value::Array(items)) = v else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .filter_map(|i| i.as_object())
        .map(|b| {
            Ok(BackupStatus {
                node: str_field(b, &["node", "name"])
                    .ok_or(StatusError::Missing("backups[].node"))?,
                acked: u64_field(b, "backups[].acked", &["acked", "acknowledged"])?,
                healthy: bool_field(b, &["healthy"]),
                in_contact: bool_field(b, &["in_contact"]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ferry status --json` prints (ferry_proto::control::NodeStatus).
    #[test]
    fn what_ferryd_prints() {
        let primary = parse(
            r#"{
  "node": "n1",
  "witness": false,
  "connected": ["n2", "w"],
  "apps": [
    {
      "app": "kv", "role": "primary", "epoch": 2, "primary": "n1", "mode": "sync",
      "logged": 4211, "acked": 4211, "durable": 0, "replayed": 4211,
      "lag_records": 0, "lag_ms": 0, "healthy": true, "protected": true,
      "gate_open": true,
      "backups": [{"node": "n2", "acked": 4211, "healthy": true, "in_contact": true}],
      "vip": "10.99.0.100/24@eth0", "pid": 1234
    }
  ]
}"#,
        )
        .unwrap();
        assert_eq!(primary.node.as_deref(), Some("n1"));
        assert_eq!(primary.role, None);
        let a = primary.app("kv").unwrap();
        assert_eq!((a.role.clone(), a.epoch), (Role::Primary, 2));
        assert_eq!(
            (a.logged, a.acknowledged, a.replayed),
            (Some(4211), Some(4211), Some(4211))
        );
        assert_eq!((a.protected, a.gate_open), (Some(true), Some(true)));
        assert!(a.claims_serving());
        assert_eq!(
            a.backups,
            vec![BackupStatus {
                node: "n2".into(),
                acked: Some(4211),
                healthy: Some(true),
                in_contact: Some(true)
            }]
        );
        assert!(a.backups[0].in_sync());

        let backup = parse(
            r#"{"node":"n2","witness":false,"connected":["n1"],"apps":[{"app":"kv",
                "role":"backup","epoch":2,"primary":"n1","mode":"sync","logged":0,"acked":0,
                "durable":4200,"replayed":4100,"lag_records":0,"lag_ms":0,"healthy":true,
                "protected":false,"gate_open":false,"backups":[],"vip":null,"pid":99}]}"#,
        )
        .unwrap();
        let b = backup.app("kv").unwrap();
        assert_eq!((b.role.clone(), b.replayed), (Role::Backup, Some(4100)));
        assert!(!b.claims_serving());

        let candidate = parse(
            r#"{"node":"n2","witness":false,"connected":[],"apps":[{"app":"kv",
                "role":"candidate","epoch":3,"logged":0,"acked":0,"replayed":4100,
                "protected":false,"gate_open":false}]}"#,
        )
        .unwrap();
        assert_eq!(candidate.app("kv").unwrap().role, Role::Candidate);

        let witness =
            parse(r#"{"node":"w","witness":true,"connected":["n1","n2"],"apps":[]}"#).unwrap();
        assert_eq!(witness.role, Some(Role::Witness));
    }

    #[test]
    fn node_object_with_an_array_of_apps() {
        let s = parse(
            r#"{"node":"n1","apps":[{"name":"kv","role":"primary","epoch":3,
                "gseq":{"logged":120,"acknowledged":118,"replayed":0},
                "protected":true,"gate":"open","extra":{"x":1}}]}"#,
        )
        .unwrap();
        assert_eq!(s.node.as_deref(), Some("n1"));
        let a = s.app("kv").unwrap();
        assert_eq!(a.role, Role::Primary);
        assert_eq!(a.epoch, 3);
        assert_eq!(
            (a.logged, a.acknowledged, a.replayed),
            (Some(120), Some(118), Some(0))
        );
        assert_eq!(a.protected, Some(true));
        assert!(a.claims_serving());
    }

    #[test]
    fn apps_keyed_by_name_and_flat_sequence_numbers() {
        let s = parse(
            r#"{"node":"n2","apps":{"kv":{"role":"backup","epoch":4,
                "logged":10,"acked":9,"gseq_replayed":8,"protected":false}}}"#,
        )
        .unwrap();
        let a = s.app("kv").unwrap();
        assert_eq!(a.role, Role::Backup);
        assert_eq!(
            (a.logged, a.acknowledged, a.replayed),
            (Some(10), Some(9), Some(8))
        );
        assert!(!a.claims_serving());
    }

    #[test]
    fn a_witness_without_apps() {
        let s = parse(r#"{"node":"w","role":"witness","apps":[]}"#).unwrap();
        assert_eq!(s.role, Some(Role::Witness));
        assert!(s.apps.is_empty());
        let s = parse(r#"{"node":"w","role":"witness"}"#).unwrap();
        assert_eq!(s.role, Some(Role::Witness));
        assert!(s.apps.is_empty());
    }

    #[test]
    fn a_single_app_and_an_array() {
        let one = parse(r#"{"name":"kv","role":"primary","epoch":1,"gate_open":false}"#).unwrap();
        let a = one.app("kv").unwrap();
        assert_eq!(a.gate_open, Some(false));
        assert!(
            !a.claims_serving(),
            "a primary with a closed gate does not serve"
        );
        let many = parse(
            r#"[{"app":"kv","role":"witness","epoch":2},{"name":"db","role":"PRIMARY","epoch":7}]"#,
        )
        .unwrap();
        assert_eq!(many.apps.len(), 2);
        assert_eq!(many.app("kv").unwrap().role, Role::Witness);
        assert_eq!(many.app("db").unwrap().role, Role::Primary);
        assert_eq!(many.app("db").unwrap().gate_open, None);
        assert!(many.app("db").unwrap().claims_serving());
    }

    #[test]
    fn bad_outputs_say_what_is_wrong() {
        assert!(matches!(parse("primary"), Err(StatusError::Json(_))));
        assert_eq!(
            parse(r#"{"name":"kv","epoch":1}"#),
            Err(StatusError::Missing("role"))
        );
        assert_eq!(
            parse(r#"{"name":"kv","role":"backup"}"#),
            Err(StatusError::Missing("epoch"))
        );
        assert!(matches!(
            parse(r#"{"name":"kv","role":"backup","epoch":"three"}"#),
            Err(StatusError::Type { field: "epoch", .. })
        ));
        assert!(matches!(
            parse(r#"{"apps":3}"#),
            Err(StatusError::Type { field: "apps", .. })
        ));
        assert!(matches!(parse("7"), Err(StatusError::Type { .. })));
    }
}
