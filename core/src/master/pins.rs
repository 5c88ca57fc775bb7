//! Decisions a replay imposes on the master. A recording holds the slave
//! every transfer went to and the name every STOU picked; the simulator,
//! replaying it, pins them here (per client address and path) right before
//! the client sends the command, and the session takes a pinned choice
//! instead of its own when the pinned slave is a candidate. Empty outside
//! the simulator: production never pins.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::proto::VPath;

#[derive(Debug, Default)]
pub struct Pins {
    /// (client, path) -> slave name; `None` path: a STOU without a name.
    slaves: BTreeMap<(IpAddr, Option<VPath>), String>,
    /// client -> the name its next STOU picks.
    stou: BTreeMap<IpAddr, String>,
}

impl Pins {
    /// Transfers of `path` for `client` go to `slave` from now on (when it
    /// can take them).
    pub fn pin_slave(&mut self, client: IpAddr, path: Option<VPath>, slave: String) {
        self.slaves.insert((client, path), slave);
    }

    /// The next STOU of `client` names its file `name` (when free).
    pub fn pin_stou(&mut self, client: IpAddr, name: String) {
        self.stou.insert(client, name);
    }

    pub fn slave(&self, client: IpAddr, path: Option<&VPath>) -> Option<&str> {
        if self.slaves.is_empty() {
            return None;
        }
        self.slaves
            .get(&(client, path.cloned()))
            .map(String::as_str)
    }

    pub fn take_stou(&mut self, client: IpAddr) -> Option<String> {
        self.stou.remove(&client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_per_client_and_path() {
        let mut p = Pins::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let f = VPath::parse_absolute("/f").unwrap();
        assert_eq!(p.slave(a, Some(&f)), None);
        p.pin_slave(a, Some(f.clone()), "s2".into());
        assert_eq!(p.slave(a, Some(&f)), Some("s2"));
        assert_eq!(p.slave(b, Some(&f)), None);
        assert_eq!(p.slave(a, None), None);
        p.pin_stou(a, "stou.1.1".into());
        assert_eq!(p.take_stou(a).as_deref(), Some("stou.1.1"));
        assert_eq!(p.take_stou(a), None);
    }
}
