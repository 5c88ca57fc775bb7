//! Replication and the slave lifecycle in the master's config
//! (`[replication]`, `slaves`, `accept_new_slaves`): how many copies each
//! path keeps, how many an upload waits for, when an absent slave stops
//! counting, and how much bandwidth copying between slaves may take.

use serde::{Deserialize, Serialize};

/// One rule (`[[replication.rules]]`): paths matching `path` (a glob, as
/// in `[[permissions]]`: `*` any characters, `?` one; `/dir/*` also
/// matches `/dir`) keep `copies` copies on distinct slaves, and an upload's
/// 226 waits until `sync_copies` of them hold it. The first matching rule
/// wins; without one a path keeps [`ReplicationConfig::copies`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationRule {
    pub path: String,
    pub copies: u32,
    #[serde(default = "one")]
    pub sync_copies: u32,
}

fn one() -> u32 {
    1
}

/// `[replication]` in the master's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Copies of every path no rule names (1: one copy, as uploaded).
    pub copies: u32,
    /// Copies an upload waits for, for paths no rule names.
    pub sync_copies: u32,
    pub rules: Vec<ReplicationRule>,
    /// A slave offline longer than this no longer counts as a holder, and
    /// its files are copied elsewhere; one back sooner is not copied again.
    pub slave_lost_after_ms: u64,
    /// Bytes per second a slave may send for copies (repair, drain,
    /// synchronous copies), so client transfers keep priority; 0: no cap.
    pub rate_per_slave: u64,
    /// Copies a slave takes part in at once (as source or target).
    pub jobs_per_slave: u32,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            copies: 1,
            sync_copies: 1,
            rules: Vec::new(),
            slave_lost_after_ms: 10 * 60_000,
            rate_per_slave: 200 << 20,
            jobs_per_slave: 2,
        }
    }
}

impl ReplicationConfig {
    /// (copies, sync_copies) for `path` (sync at least 1, at most copies).
    pub fn rule_for(&self, path: &str) -> (u32, u32) {
        let (copies, sync) = self
            .rules
            .iter()
            .find(|r| super::policy::glob_path(&r.path, path))
            .map_or((self.copies, self.sync_copies), |r| {
                (r.copies, r.sync_copies)
            });
        let copies = copies.max(1);
        (copies, sync.clamp(1, copies))
    }

    pub fn validate(&self) -> Result<(), String> {
        for r in self
            .rules
            .iter()
            .map(|r| (&r.path, r.copies, r.sync_copies))
            .chain([(&String::from("(default)"), self.copies, self.sync_copies)])
        {
            if r.1 == 0 || r.2 == 0 || r.2 > r.1 {
                return Err(format!(
                    "replication rule {}: copies ({}) and sync_copies ({}) must be at least 1, sync_copies at most copies",
                    r.0, r.1, r.2
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_wins_and_sync_is_bounded() {
        let r: ReplicationConfig = toml::from_str(
            "copies = 2\n[[rules]]\npath = \"/important/*\"\ncopies = 3\nsync_copies = 2\n\
             [[rules]]\npath = \"/tmp*\"\ncopies = 1\n",
        )
        .unwrap();
        r.validate().unwrap();
        assert_eq!(r.rule_for("/important/a.zip"), (3, 2));
        assert_eq!(r.rule_for("/important"), (3, 2));
        assert_eq!(r.rule_for("/tmp/x"), (1, 1));
        assert_eq!(r.rule_for("/other"), (2, 1));
        let bad: ReplicationConfig = toml::from_str("copies = 1\nsync_copies = 2").unwrap();
        assert!(bad.validate().is_err());
    }
}
