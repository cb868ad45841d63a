//! What a run found, per run and per scenario, as a table and as JSON
//! (docs/HARNESS.md, "The report").

use serde::Serialize;
use std::fmt::Write as _;

/// The nearest-rank percentile `p` (0–100) of `values`: the smallest value
/// such that at least p % of the values are at most it. `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// One run of one scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunResult {
    pub scenario: String,
    /// 1, 2, … within the scenario.
    pub run: u32,
    /// Writes whose `OK` came back, writes whose outcome is unknown (the
    /// connection broke first), writes certainly not applied.
    pub acknowledged: u64,
    pub unknown: u64,
    pub failed: u64,
    /// Connections the writers had to open again (0 when every connection
    /// survived the fault).
    pub reconnects: u64,
    /// Acknowledged writes not found afterwards.
    pub lost: u64,
    /// Two primaries serving in one epoch, or answers from two hosts at
    /// once; one line each.
    pub split_brain: Vec<String>,
    /// Fault injection to the first request served after it, when the
    /// scenario fails over (milliseconds).
    pub failover_ms: Option<f64>,
    /// The node that served before the fault and after it.
    pub primary_before: Option<String>,
    pub primary_after: Option<String>,
    /// Broken invariants, one line each. Any makes the run fail.
    pub violations: Vec<String>,
    /// Checks that could not be made, and why. Any makes the run fail too:
    /// nothing counts as passed that was not checked.
    pub unchecked: Vec<String>,
    /// What happened, for the reader.
    pub notes: Vec<String>,
}

impl RunResult {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
            && self.unchecked.is_empty()
            && self.split_brain.is_empty()
            && self.lost == 0
    }
}

/// The runs of one scenario, summed up.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScenarioSummary {
    pub scenario: String,
    pub runs: u32,
    pub passed: u32,
    pub writes_acknowledged: u64,
    pub writes_lost: u64,
    pub split_brain_events: u64,
    pub violations: u64,
    pub unchecked: u64,
    /// Over the runs that measured one.
    pub failover_p50_ms: Option<f64>,
    pub failover_p99_ms: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub scenarios: Vec<ScenarioSummary>,
    pub runs: Vec<RunResult>,
}

impl Report {
    /// Sum `runs` up per scenario, in the order the scenarios first appear.
    pub fn new(runs: Vec<RunResult>) -> Report {
        let mut names: Vec<String> = Vec::new();
        for r in &runs {
            if !names.contains(&r.scenario) {
                names.push(r.scenario.clone());
            }
        }
        let scenarios: Vec<ScenarioSummary> = names
            .iter()
            .map(|name| {
                let rs: Vec<&RunResult> = runs.iter().filter(|r| &r.scenario == name).collect();
                let times: Vec<f64> = rs.iter().filter_map(|r| r.failover_ms).collect();
                ScenarioSummary {
                    scenario: name.clone(),
                    runs: rs.len() as u32,
                    passed: rs.iter().filter(|r| r.passed()).count() as u32,
                    writes_acknowledged: rs.iter().map(|r| r.acknowledged).sum(),
                    writes_lost: rs.iter().map(|r| r.lost).sum(),
                    split_brain_events: rs.iter().map(|r| r.split_brain.len() as u64).sum(),
                    violations: rs.iter().map(|r| r.violations.len() as u64).sum(),
                    unchecked: rs.iter().map(|r| r.unchecked.len() as u64).sum(),
                    failover_p50_ms: percentile(&times, 50.0),
                    failover_p99_ms: percentile(&times, 99.0),
                }
            })
            .collect();
        let ok = !runs.is_empty() && runs.iter().all(RunResult::passed);
        Report {
            ok,
            scenarios,
            runs,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The table: one line per scenario, then the problems of each failed
    /// run.
    pub fn table(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let header = [
            "scenario",
            "runs",
            "passed",
            "acked",
            "lost",
            "split-brain",
            "violations",
            "unchecked",
            "failover p50 ms",
            "p99 ms",
        ];
        let rows: Vec<Vec<String>> = self
            .scenarios
            .iter()
            .map(|s| {
                vec![
                    s.scenario.clone(),
                    s.runs.to_string(),
                    s.passed.to_string(),
                    s.writes_acknowledged.to_string(),
                    s.writes_lost.to_string(),
                    s.split_brain_events.to_string(),
                    s.violations.to_string(),
                    s.unchecked.to_string(),
                    ms(s.failover_p50_ms),
                    ms(s.failover_p99_ms),
                ]
            })
            .collect();
        let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
                if i == 0 {
                    let _ = write!(out, "{c:<w$}");
                } else {
                    let _ = write!(out, "  {c:>w$}");
                }
            }
            out.push('\n');
        };
        line(
            &mut out,
            &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        );
        for r in &rows {
            line(&mut out, r);
        }
        for r in self.runs.iter().filter(|r| !r.passed()) {
            let _ = writeln!(out, "\n{} run {}: FAILED", r.scenario, r.run);
            if r.lost > 0 {
                let _ = writeln!(out, "  lost {} acknowledged writes", r.lost);
            }
            for s in &r.split_brain {
                let _ = writeln!(out, "  split-brain: {s}");
            }
            for v in &r.violations {
                let _ = writeln!(out, "  violation: {v}");
            }
            for u in &r.unchecked {
                let _ = writeln!(out, "  not checked: {u}");
            }
        }
        let _ = writeln!(
            out,
            "\n{}",
            if self.ok {
                "all runs passed"
            } else {
                "FAILED: see above"
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0, 10.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0, 10.0], 99.0), Some(10.0));
        assert_eq!(percentile(&[f64::NAN, 4.0], 50.0), Some(4.0));
    }

    fn run(scenario: &str, n: u32, failover: Option<f64>) -> RunResult {
        RunResult {
            scenario: scenario.into(),
            run: n,
            acknowledged: 100,
            failover_ms: failover,
            ..RunResult::default()
        }
    }

    #[test]
    fn summary_per_scenario_and_failures() {
        let mut bad = run("kill-app", 2, Some(300.0));
        bad.lost = 3;
        bad.split_brain.push("epoch 4: n1 and n2 serving".into());
        let mut unchecked = run("kill-witness", 1, None);
        unchecked.unchecked.push("digest: no backup".into());
        let report = Report::new(vec![
            run("kill-app", 1, Some(100.0)),
            bad,
            run("kill-app", 3, Some(200.0)),
            unchecked,
        ]);
        assert!(!report.ok);
        assert_eq!(report.scenarios.len(), 2);
        let s = &report.scenarios[0];
        assert_eq!(
            (s.scenario.as_str(), s.runs, s.passed, s.writes_acknowledged),
            ("kill-app", 3, 2, 300)
        );
        assert_eq!((s.writes_lost, s.split_brain_events), (3, 1));
        assert_eq!(
            (s.failover_p50_ms, s.failover_p99_ms),
            (Some(200.0), Some(300.0))
        );
        let w = &report.scenarios[1];
        assert_eq!((w.passed, w.unchecked, w.failover_p50_ms), (0, 1, None));

        let table = report.table();
        let first = table.lines().next().unwrap();
        assert!(first.starts_with("scenario"), "{table}");
        assert!(first.contains("failover p50 ms"), "{table}");
        assert!(table.contains("kill-app run 2: FAILED"), "{table}");
        assert!(table.contains("lost 3 acknowledged writes"), "{table}");
        assert!(
            table.contains("split-brain: epoch 4: n1 and n2 serving"),
            "{table}"
        );
        assert!(table.contains("not checked: digest: no backup"), "{table}");
        assert!(table.trim_end().ends_with("FAILED: see above"), "{table}");

        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["scenarios"][0]["scenario"], "kill-app");
        assert_eq!(json["scenarios"][0]["runs"], 3);
        assert_eq!(json["scenarios"][0]["writes_acknowledged"], 300);
        assert_eq!(json["scenarios"][0]["writes_lost"], 3);
        assert_eq!(json["scenarios"][0]["split_brain_events"], 1);
        assert_eq!(json["scenarios"][0]["failover_p50_ms"], 200.0);
        assert_eq!(json["scenarios"][0]["failover_p99_ms"], 300.0);
        assert_eq!(
            json["scenarios"][1]["failover_p50_ms"],
            serde_json::Value::Null
        );
        assert_eq!(json["runs"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn all_passed_and_empty() {
        let report = Report::new(vec![run("kill-ferryd", 1, Some(50.0))]);
        assert!(report.ok);
        assert!(report.table().trim_end().ends_with("all runs passed"));
        assert!(!Report::new(Vec::new()).ok, "no run is not a pass");
    }
}
