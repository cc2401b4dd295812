//! What `etcdimg test` reports: one row per check, PASS, FAIL or SKIP. Shared by the rootfs
//! checks (`test`) and the container checks (`test_containerd`).

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Not run here (the detail says why); not a failure.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub arch: String,
    pub image: String,
    pub checks: Vec<Check>,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub(crate) fn check(&mut self, name: impl Into<String>, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.checks.push(Check {
            name: name.into(),
            ok,
            skipped: false,
            detail,
        });
    }

    pub(crate) fn skip(&mut self, name: impl Into<String>, why: &str) {
        self.checks.push(Check {
            name: name.into(),
            ok: true,
            skipped: true,
            detail: format!("not run: {why}"),
        });
    }

    /// The table: one row per check.
    pub fn table(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = format!("{} ({})\n", self.image, self.arch);
        for c in &self.checks {
            out.push_str(&format!(
                "  {}  {:width$}  {}\n",
                match (c.ok, c.skipped) {
                    (_, true) => "SKIP",
                    (true, false) => "PASS",
                    (false, false) => "FAIL",
                },
                c.name,
                c.detail
            ));
        }
        out
    }
}
