//! The console's fault switches, for the labs: the participants' faults (`PUT /admin/faults/{op}`
//! on each participant's admin API, called here with the coordinator's admin token, so it works
//! where the participants share it, as in the one-command platform) and the coordinator's own
//! failpoints. Both are refused in production mode by what they switch; the page says so and
//! offers no form.

use maud::{html, Markup};
use serde::Deserialize;

/// A participant's armed fault as its admin API lists it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Armed {
    pub op: String,
    pub kind: String,
    pub ms: Option<u64>,
    pub code: Option<String>,
    pub remaining: u32,
}

/// Calls a fault took so far.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Injected {
    pub op: String,
    pub kind: String,
    pub calls: u64,
}

/// `GET /admin/faults`'s answer.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct Listed {
    pub armed: Vec<Armed>,
    pub injected: Vec<Injected>,
}

/// One participant's switches as the page shows them.
pub struct Participant {
    pub name: String,
    /// Its faults, or why they could not be read.
    pub listed: Result<Listed, String>,
}

/// The form that arms a participant's fault.
#[derive(Debug, Deserialize)]
pub struct ArmForm {
    pub op: String,
    pub kind: String,
    #[serde(default)]
    pub ms: String,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub times: String,
}

impl ArmForm {
    /// The admin API's body: only the fields the kind takes (the API refuses the others).
    pub fn body(&self) -> Result<serde_json::Value, String> {
        let times: u32 = match self.times.trim() {
            "" => 1,
            t => t
                .parse()
                .map_err(|_| format!("times must be a whole number, not {t:?}"))?,
        };
        let mut body = serde_json::json!({"kind": self.kind, "times": times});
        match self.kind.as_str() {
            "delay" => {
                let ms: u64 = self
                    .ms
                    .trim()
                    .parse()
                    .map_err(|_| "a delay needs ms (a whole number)".to_owned())?;
                body["ms"] = ms.into();
            }
            "fail" if !self.code.trim().is_empty() => body["code"] = self.code.trim().into(),
            _ => {}
        }
        Ok(body)
    }
}

/// The coordinator's failpoints as the page shows them: (name, armed with `after`).
pub type Failpoints = Vec<(&'static str, Option<u32>)>;

const OPS: [&str; 5] = ["try", "confirm", "cancel", "action", "compensate"];
const KINDS: [(&str, &str); 4] = [
    ("delay", "delay: arrives late by ms"),
    ("hang", "hang: until released"),
    ("fail", "fail: a business FAILURE (try, action)"),
    ("error", "error: unavailable"),
];

fn fault_detail(a: &Armed) -> String {
    match (a.ms, a.code.as_deref()) {
        (Some(ms), _) => format!("{ms} ms"),
        (_, Some(code)) => code.to_owned(),
        _ => String::new(),
    }
}

/// The page.
pub fn page(
    participants: &[Participant],
    failpoints: &Failpoints,
    production: bool,
    flash: Option<&str>,
    error: Option<&str>,
) -> Markup {
    super::page::layout(
        "Faults",
        true,
        html! {
            h1 { "Faults" }
            p.note {
                "Switch on the anomalies the course is about: a participant's next calls of one op "
                "delayed, hung until released, refused, or unavailable; the coordinator killed at a "
                "precise step. Watch what follows on the transactions page."
            }
            @if let Some(f) = flash { p.flash role="status" { (f) } }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if production {
                p.error #production { "Faults are off in production mode." }
            }
            @for p in participants {
                section.card data-participant=(p.name) {
                    h2 { (p.name) }
                    @match &p.listed {
                        Err(why) => p.error { "Its faults cannot be read: " (why) },
                        Ok(listed) => {
                            @if listed.armed.is_empty() {
                                p.empty { "Nothing armed." }
                            } @else {
                                table.armed {
                                    thead { tr { th { "op" } th { "fault" } th { "" } th { "calls left" } } }
                                    tbody {
                                        @for a in &listed.armed {
                                            tr data-op=(a.op) data-kind=(a.kind) {
                                                td { (a.op) } td { (a.kind) } td { (fault_detail(a)) } td { (a.remaining) }
                                            }
                                        }
                                    }
                                }
                            }
                            @if !listed.injected.is_empty() {
                                p.note {
                                    "Calls taken so far: "
                                    (listed.injected.iter().map(|i| format!("{} {} × {}", i.op, i.kind, i.calls)).collect::<Vec<_>>().join(", "))
                                }
                            }
                        }
                    }
                    @if !production {
                        form.arm method="post" action=(format!("/console/faults/{}/arm", p.name)) {
                            label { "op " select name="op" { @for op in OPS { option value=(op) { (op) } } } }
                            label { "fault " select name="kind" { @for (k, text) in KINDS { option value=(k) { (text) } } } }
                            label { "ms " input type="number" name="ms" min="1" placeholder="5000"; }
                            label { "code " input type="text" name="code" maxlength="64" placeholder="injected_failure"; }
                            label { "calls " input type="number" name="times" min="1" max="10000" value="1"; }
                            button type="submit" { "Arm" }
                        }
                        div.actions {
                            form.inline method="post" action=(format!("/console/faults/{}/release", p.name)) {
                                button.secondary type="submit" { "Release hung calls" }
                            }
                            " "
                            form.inline method="post" action=(format!("/console/faults/{}/clear", p.name)) {
                                button.secondary type="submit" { "Clear all" }
                            }
                        }
                    }
                }
            }
            section.card data-participant="coordinator" {
                h2 { "coordinator" }
                p.note { "A failpoint kills the coordinator (SIGKILL) when a transaction reaches it, after letting the given number of hits pass; recovery finishes the transaction once it is back." }
                table.armed {
                    thead { tr { th { "failpoint" } th { "armed" } th { "" } } }
                    tbody {
                        @for (name, after) in failpoints {
                            tr data-failpoint=(name) {
                                td { code { (name) } }
                                td { @match after { Some(n) => { "after " (n) " hit(s)" }, None => "no" } }
                                td {
                                    @if !production {
                                        @if after.is_some() {
                                            form.inline method="post" action=(format!("/console/failpoints/{name}/disarm")) {
                                                button.secondary type="submit" { "Disarm" }
                                            }
                                        } @else {
                                            form.inline method="post" action=(format!("/console/failpoints/{name}/arm")) {
                                                input type="number" name="after" min="0" value="0" aria-label="hits to let pass";
                                                " " button.secondary type="submit" { "Arm" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(kind: &str, ms: &str, code: &str, times: &str) -> ArmForm {
        ArmForm {
            op: "try".into(),
            kind: kind.into(),
            ms: ms.into(),
            code: code.into(),
            times: times.into(),
        }
    }

    #[test]
    fn an_armed_fault_sends_only_the_fields_its_kind_takes() {
        assert_eq!(
            form("delay", "5000", "ignored", "").body().unwrap(),
            serde_json::json!({"kind": "delay", "ms": 5000, "times": 1})
        );
        assert_eq!(
            form("fail", "", "lab_says_no", "3").body().unwrap(),
            serde_json::json!({"kind": "fail", "code": "lab_says_no", "times": 3})
        );
        assert_eq!(
            form("error", "12", "", "2").body().unwrap(),
            serde_json::json!({"kind": "error", "times": 2})
        );
    }

    #[test]
    fn a_delay_without_ms_or_a_bad_count_is_refused_before_anything_is_sent() {
        assert!(form("delay", "", "", "").body().is_err());
        assert!(form("error", "", "", "many").body().is_err());
    }
}
