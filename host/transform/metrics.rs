//! Counters and gauges a transform defines (`host.counter-add`, `host.gauge-set`), kept per
//! transform across its instances and exported at `/metrics`. Names are bounded in form and
//! number, so a guest cannot grow the host's memory or the metrics page without end.

use std::collections::BTreeMap;

/// Most counters and gauges together one transform may define.
pub const MAX_METRICS: usize = 64;
/// Longest metric name.
const MAX_NAME: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GuestMetrics {
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, f64>,
    /// A bad name or one past the limit was refused (warned about once).
    #[serde(skip)]
    warned: bool,
}

/// Why a metric was not recorded, for the one warning.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Name(String),
    TooMany(String),
}

fn valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl GuestMetrics {
    fn admit(&self, name: &str) -> Result<(), Refused> {
        if !valid(name) {
            return Err(Refused::Name(name.chars().take(MAX_NAME).collect()));
        }
        if self.counters.len() + self.gauges.len() >= MAX_METRICS {
            return Err(Refused::TooMany(name.to_string()));
        }
        Ok(())
    }

    pub fn add(&mut self, name: &str, delta: u64) -> Result<(), Refused> {
        if let Some(n) = self.counters.get_mut(name) {
            *n = n.saturating_add(delta);
            return Ok(());
        }
        self.admit(name)?;
        self.counters.insert(name.to_string(), delta);
        Ok(())
    }

    pub fn set(&mut self, name: &str, value: f64) -> Result<(), Refused> {
        if let Some(g) = self.gauges.get_mut(name) {
            *g = value;
            return Ok(());
        }
        self.admit(name)?;
        self.gauges.insert(name.to_string(), value);
        Ok(())
    }

    /// What an earlier instance recorded, under what this one recorded since (a reload's
    /// fresh `init`): counters add up, and a gauge this one set keeps its new value.
    pub fn carry(&mut self, earlier: GuestMetrics) {
        for (name, n) in earlier.counters {
            let _ = self.add(&name, n);
        }
        for (name, value) in earlier.gauges {
            if !self.gauges.contains_key(&name) {
                let _ = self.set(&name, value);
            }
        }
        self.warned |= earlier.warned;
    }

    /// True the first time a refusal should be reported.
    pub fn first_refusal(&mut self) -> bool {
        !std::mem::replace(&mut self.warned, true)
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Name(n) => write!(
                f,
                "metric name {n:?} is not letters, digits and _ (at most {MAX_NAME}, not starting with a digit)"
            ),
            Refused::TooMany(n) => write!(
                f,
                "metric {n:?} is past the {MAX_METRICS} counters and gauges a transform may define"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_bounded_in_number() {
        let mut m = GuestMetrics::default();
        m.add("masked", 2).unwrap();
        m.add("masked", 3).unwrap();
        assert_eq!(m.counters["masked"], 5);
        assert!(matches!(m.add("no spaces", 1), Err(Refused::Name(_))));
        assert!(matches!(m.set("9lives", 1.0), Err(Refused::Name(_))));
        for i in 1..MAX_METRICS {
            m.set(&format!("g{i}"), i as f64).unwrap();
        }
        assert!(matches!(m.add("one_more", 1), Err(Refused::TooMany(_))));
        m.set("g1", -1.0).unwrap();
        assert_eq!(
            m.gauges["g1"], -1.0,
            "a known gauge still updates at the limit"
        );
        assert!(m.first_refusal() && !m.first_refusal());
    }

    #[test]
    fn a_reload_carries_counters_on_and_keeps_the_gauges_its_init_set() {
        let mut earlier = GuestMetrics::default();
        earlier.add("masked", 5).unwrap();
        earlier.set("fields", 2.0).unwrap();
        earlier.set("stale", 1.0).unwrap();
        let mut fresh = GuestMetrics::default();
        fresh.add("masked", 1).unwrap();
        fresh.set("fields", 3.0).unwrap();
        fresh.carry(earlier);
        assert_eq!(fresh.counters["masked"], 6);
        assert_eq!(fresh.gauges["fields"], 3.0, "set by the new init");
        assert_eq!(fresh.gauges["stale"], 1.0, "kept from before");
    }
}
