//! The end of a run and what a script can ask to see: the invariants
//! checked once the clients are done and the cluster has settled (slaves
//! online, uploads whole, the history check, copies per the replication
//! rules), and `show db` / `show disk` / `show slaves`.

use super::*;

impl World<'_> {
    pub(super) fn show_db(&self) {
        let Some(state) = self.master_state() else {
            self.log("== db: master is down".into());
            return;
        };
        let lines: Vec<String> = {
            let st = state.lock();
            st.db
                .files_under(&VPath::root())
                .into_iter()
                .map(|(p, m)| {
                    let holders: Vec<&str> = m.holders.iter().map(|&h| st.slaves.name(h)).collect();
                    format!("== db {p} {} bytes on [{}]", m.size, holders.join(","))
                })
                .collect()
        };
        if lines.is_empty() {
            self.log("== db: empty".into());
        }
        for l in lines {
            self.log(l);
        }
    }

    pub(super) fn show_disk(&self, slave: &str) {
        let Some(disk) = self.disks.get(slave) else {
            return;
        };
        let d = disk.lock();
        let mut lines = Vec::new();
        for (p, f) in &d.files {
            lines.push(format!(
                "== disk {slave} {p} {} bytes crc32={:08x}",
                f.data.len(),
                crate::env::crc32(&f.data)
            ));
        }
        for (name, t) in &d.temp {
            lines.push(format!(
                "== disk {slave} (temporary {name}) {} bytes",
                t.len()
            ));
        }
        if lines.is_empty() {
            lines.push(format!("== disk {slave}: empty"));
        }
        drop(d);
        for l in lines {
            self.log(l);
        }
    }

    pub(super) fn show_slaves(&self) {
        let Some(state) = self.master_state() else {
            self.log("== slaves: master is down".into());
            return;
        };
        let lines: Vec<String> = {
            let st = state.lock();
            st.slaves
                .iter()
                .map(|(id, s)| {
                    format!(
                        "== slave {} {} files={} active={} reserved={}",
                        s.name,
                        if s.is_online() {
                            "online"
                        } else {
                            s.state.as_str()
                        },
                        st.db.held_by(id),
                        s.active,
                        s.reserved
                    )
                })
                .collect()
        };
        for l in lines {
            self.log(l);
        }
    }

    /// End of script: wait for the clients, let the cluster settle, then
    /// check what must hold at the end of every run.
    pub(super) fn finish(&mut self) {
        let names: Vec<String> = self.clients.keys().cloned().collect();
        let ok = self.run_until(STEP_LIMIT, |d| names.iter().all(|n| d.client_idle(n)));
        if !ok && self.broken.is_none() {
            self.violation("clients still busy at the end".into());
        }
        if !self.master_up() {
            self.event("end: master is down, cluster checks skipped".into());
            self.check_uploads();
            return;
        }
        // Every slave the master can reach ends online.
        let ok = self.run_until(SETTLE, |d| d.all_reachable_online().is_empty());
        if !ok {
            let missing = self.all_reachable_online().join(", ");
            self.violation(format!(
                "reachable slave(s) {missing} not online {} after the script",
                secs(SETTLE)
            ));
        }
        // The master still accepts sessions.
        if !self.cut.iter().any(|(a, b)| a == "probe" || b == "probe") {
            self.probe.pending.set(2);
            let _ = self.probe.tx.send(ClientOp::Connect);
            let _ = self.probe.tx.send(ClientOp::Command("QUIT".into()));
            let pending = self.probe.pending.clone();
            self.run_until(STEP_LIMIT, |_| pending.get() == 0);
            let greeted = self
                .probe_transcript
                .borrow()
                .lines
                .iter()
                .any(|l| l.starts_with("probe< 220"));
            if !greeted {
                self.violation(
                    "the master no longer accepts sessions (no 220 for a new client)".into(),
                );
            }
        }
        self.check_uploads();
        if self.all_reachable_online().is_empty() {
            self.check_replication();
            self.check_history();
        }
    }

    /// Copies per the replication rules (invariant 8): once repair has
    /// settled, every listed file has its rule's copies on distinct
    /// reachable slaves that count (online, not draining, not removed) or
    /// on slaves away for less than `slave_lost_after_ms` (not lost yet);
    /// fewer only when fewer slaves could hold it. Every reachable holder
    /// has the file on its disk.
    fn check_replication(&mut self) {
        if self.store_wiped {
            return;
        }
        let Some(state) = self.master_state() else {
            return;
        };
        let settled = {
            let state = state.clone();
            move |_: &mut Self| {
                let st = state.lock();
                st.replication.queued() == 0 && st.replication.running.is_empty()
            }
        };
        let calm = self.run_until(SETTLE, settled);
        let st = state.lock();
        let lost_after = st.config.replication.slave_lost_after_ms;
        let now = st.now_ms;
        let usable = |id| {
            st.slaves.get(id).is_some_and(|s| {
                s.is_online() && !s.draining && !s.removed && self.reachable(&s.name)
            })
        };
        let away = |id| {
            st.slaves.get(id).is_some_and(|s| {
                !s.is_online() && !s.draining && !s.removed && s.counts(now, lost_after)
            })
        };
        let usable_count = st.slaves.iter().filter(|(id, _)| usable(*id)).count() as u32;
        let mut short = Vec::new();
        for (path, meta) in st.db.files_under(&VPath::root()) {
            let (rule, _) = st.config.replication.rule_for(path.as_str());
            let waiting = meta.holders.iter().filter(|h| away(**h)).count() as u32;
            let have = meta.holders.iter().filter(|h| usable(**h)).count() as u32 + waiting;
            let want = rule.min(usable_count + waiting);
            if have < want {
                let names: Vec<&str> = meta.holders.iter().map(|h| st.slaves.name(*h)).collect();
                short.push(format!(
                    "{path} has {have} counting copies (on [{}]), its rule wants {rule} and {want} slaves could hold it",
                    names.join(",")
                ));
            }
            for h in meta.holders.iter() {
                let name = st.slaves.name(*h);
                if !usable(*h) {
                    continue;
                }
                let on_disk = self.disks.get(name).is_some_and(|d| d.get(&path).is_some());
                if !on_disk {
                    short.push(format!(
                        "{path} lists {name} as a holder, but its disk lacks it"
                    ));
                }
            }
        }
        drop(st);
        if !calm && short.is_empty() {
            self.event("end: repair queue not empty (no slave can take those copies)".into());
        }
        for v in short {
            self.violation(format!("replication: {v}"));
        }
    }

    /// The history check ([`crate::history`]) on the settled cluster: the
    /// master's listing and the online slaves' disks against every reply
    /// the clients got.
    fn check_history(&self) {
        if self.store_wiped {
            self.event("end: the store was wiped, history check skipped".into());
            return;
        }
        let Some(state) = self.master_state() else {
            return;
        };
        let mut initial = BTreeMap::new();
        for f in &self.sc.topology.files {
            initial.insert(f.path.to_string(), Rc::new(content(f.seed, f.size)));
        }
        let mut ops = self.transcript.borrow().history.clone();
        ops.extend(self.probe_transcript.borrow().history.iter().cloned());
        ops.sort_by_key(|o| (o.start, o.end));
        let history = crate::history::History::new(ops, initial);
        let (listed, allow_overwrite) = {
            let st = state.lock();
            let mut listed: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
            for (path, meta) in st.db.files_under(&VPath::root()) {
                let holders = meta
                    .holders
                    .iter()
                    .map(|h| st.slaves.name(*h).to_string())
                    .collect();
                listed.insert(path.to_string(), (meta.size, holders));
            }
            (listed, st.config.allow_overwrite)
        };
        let online: Vec<&String> = self.disks.keys().filter(|n| self.reachable(n)).collect();
        let mut final_state = BTreeMap::new();
        for (path, (_, holders)) in &listed {
            let vpath = VPath::parse_absolute(path).ok();
            let copy = holders.iter().find_map(|h| {
                let d = self.disks.get(h)?;
                vpath.as_ref().and_then(|p| d.get(p))
            });
            let c = match copy {
                Some(data) => Rc::new(data.as_ref().clone()),
                None => Rc::new(format!("<listed, but no holder has {path}>").into_bytes()),
            };
            final_state.insert(path.clone(), Some(c));
        }
        let end = self.sim.elapsed();
        for v in history.check(end, allow_overwrite, &final_state) {
            self.violation(format!("history: {v}"));
        }
        // No online slave keeps another content under a name, nor a name
        // the master does not list.
        for name in online {
            let Some(disk) = self.disks.get(name) else {
                continue;
            };
            let d = disk.lock();
            for (path, f) in &d.files {
                match final_state.get(&path.to_string()) {
                    Some(Some(c)) if c.len() == f.data.len() && c[..] == f.data[..] => {}
                    Some(_) => self.violation(format!(
                        "history: slave {name} keeps {path} with other content than the listed version ({} bytes)",
                        f.data.len()
                    )),
                    None => self.violation(format!(
                        "history: slave {name} keeps {path}, which the master does not list"
                    )),
                }
            }
        }
    }

    /// No upload that did not complete is visible: no slave holds a strict
    /// prefix of what the client meant to store under that name, and the
    /// master does not list one.
    fn check_uploads(&self) {
        let uploads = self.transcript.borrow().uploads.clone();
        let initial: BTreeSet<&VPath> = self.sc.topology.files.iter().map(|f| &f.path).collect();
        for up in uploads.iter().filter(|u| !u.completed && u.verb == "STOR") {
            let Ok(path) = VPath::parse_absolute(up.arg.trim()) else {
                continue;
            };
            let n = up.intended.len();
            for (slave, disk) in self.disks.iter() {
                let d = disk.lock();
                if let Some(f) = d.files.get(&path) {
                    let k = f.data.len();
                    if k < n && up.intended[..k] == f.data[..] {
                        let done_later = uploads
                            .iter()
                            .any(|u| u.completed && u.arg.trim() == up.arg.trim());
                        if !done_later && !initial.contains(&path) {
                            drop(d);
                            self.violation(format!(
                                "partial upload {path} by {} stored complete on slave {slave} ({k} of {n} bytes)",
                                up.client
                            ));
                            break;
                        }
                    }
                }
            }
            if let Some(state) = self.master_state() {
                let listed = state.lock().db.file(&path).ok().map(|m| m.size);
                if let Some(k) = listed {
                    let done_later = uploads
                        .iter()
                        .any(|u| u.completed && u.arg.trim() == up.arg.trim());
                    if (k as usize) < n && !done_later && !initial.contains(&path) {
                        self.violation(format!(
                            "partial upload {path} by {} listed by the master ({k} of {n} bytes)",
                            up.client
                        ));
                    }
                }
            }
        }
    }
}
