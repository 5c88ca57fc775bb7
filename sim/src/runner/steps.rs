//! Performing one step of a script: client operations, waits, faults
//! (crash, restart, partition, hold, latency), awaits on the master's
//! registry, disk changes behind the master's back, and `show`.

use super::*;

impl World<'_> {
    pub(super) fn exec(&mut self, line: usize, kind: &StepKind) {
        match kind {
            StepKind::Client {
                client,
                op,
                background,
            } => {
                self.give(client, op.clone());
                if !background {
                    self.wait_clients(line, std::slice::from_ref(client));
                }
            }
            StepKind::Wait(names) => self.wait_clients(line, names),
            StepKind::CatchUp(names) => {
                let names = names.clone();
                self.run_until(STEP_LIMIT, |d| {
                    names.iter().all(|n| {
                        d.client_idle(n)
                            || d.clients
                                .get(n)
                                .is_none_or(|c| c.started.get() >= c.given.get())
                    })
                });
            }
            StepKind::At(t) => {
                let end = self.script_start + *t;
                let left = end.saturating_sub(self.sim.elapsed());
                self.run_until(left + Duration::from_millis(1), |s| s.sim.elapsed() >= end);
            }
            StepKind::Sleep(d) => {
                let end = self.sim.elapsed() + *d;
                self.run_until(*d + Duration::from_millis(1), |s| s.sim.elapsed() >= end);
            }
            StepKind::Crash(h) => {
                self.event(format!("crash {h}"));
                self.without_latency_variance(|sim| sim.crash(h.as_str()));
                self.crashed.insert(h.clone());
                if h == "master" {
                    *lock(&self.master_slot) = None;
                    self.master_epoch.set(self.master_epoch.get() + 1);
                    self.states.clear();
                    self.active.clear();
                }
            }
            StepKind::Restart(h) => {
                self.event(format!("restart {h}"));
                if h == "master" {
                    *lock(&self.master_slot) = None;
                    self.master_epoch.set(self.master_epoch.get() + 1);
                    self.states.clear();
                    self.active.clear();
                }
                self.without_latency_variance(|sim| sim.bounce(h.as_str()));
                self.crashed.remove(h);
            }
            StepKind::WipeStore => {
                self.event("master store lost (wiped)".into());
                self.master_store.wipe();
                self.store_wiped = true;
            }
            StepKind::Partition(a, b) | StepKind::Hold(a, b) => {
                let verb = if matches!(kind, StepKind::Partition(..)) {
                    self.sim.partition(a.as_str(), b.as_str());
                    "partition"
                } else {
                    self.sim.hold(a.as_str(), b.as_str());
                    "hold"
                };
                self.event(format!("{verb} {a} {b}"));
                self.cut.insert(pair(a, b));
                for c in [a, b] {
                    if let Some(c) = self.clients.get(c) {
                        c.link_faults.set(c.link_faults.get() + 1);
                    }
                }
            }
            StepKind::Repair(a, b) | StepKind::Release(a, b) => {
                let verb = if matches!(kind, StepKind::Repair(..)) {
                    self.sim.repair(a.as_str(), b.as_str());
                    "repair"
                } else {
                    self.sim.release(a.as_str(), b.as_str());
                    "release"
                };
                self.event(format!("{verb} {a} {b}"));
                self.cut.remove(&pair(a, b));
            }
            StepKind::Latency(a, b, lat) => {
                self.event(format!("latency {a} {b} {}", secs(*lat)));
                self.sim.set_link_latency(a.as_str(), b.as_str(), *lat);
            }
            StepKind::AwaitSlave {
                slave,
                state,
                within,
            } => {
                let want = match state {
                    SlaveStateWanted::Online => "online",
                    SlaveStateWanted::Offline => "offline",
                    SlaveStateWanted::Remerging => "remerging",
                };
                let start = self.sim.elapsed();
                let ok = self.run_until(*within, |d| d.slave_state(slave) == want);
                if ok {
                    self.event(format!(
                        "slave {slave} is {want} (waited {})",
                        secs(self.sim.elapsed() - start)
                    ));
                } else {
                    self.violation(format!(
                        "line {line}: slave {slave} not {want} within {}",
                        secs(*within)
                    ));
                }
            }
            StepKind::AwaitBytes {
                client,
                bytes,
                within,
            } => {
                let ok = self.run_until(*within, |d| {
                    d.clients
                        .get(client)
                        .is_some_and(|c| c.data_bytes.get() >= *bytes)
                });
                if ok {
                    self.event(format!("{client} moved {bytes}+ data bytes"));
                } else {
                    self.violation(format!(
                        "line {line}: {client} did not move {bytes} data bytes within {}",
                        secs(*within)
                    ));
                }
            }
            StepKind::DiskPut {
                slave,
                path,
                size,
                seed,
                count,
            } => {
                let now = (EPOCH_SECS + self.sim.elapsed().as_secs()) as i64;
                let Some(disk) = self.disks.get(slave) else {
                    return;
                };
                // Behind the master's back: the history check takes it as
                // a write that may or may not count (the master learns of
                // it at the slave's next remerge, and then it may stay).
                let at = self.sim.elapsed();
                let behind = |p: &VPath, data: &[u8]| crate::history::Op {
                    client: format!("disk {slave}"),
                    path: p.to_string(),
                    effect: crate::history::Effect::Write {
                        data: Rc::new(data.to_vec()),
                        offset: None,
                    },
                    start: at,
                    end: at,
                    status: crate::history::Status::Maybe,
                };
                if *count == 0 {
                    let data = content(*seed, *size);
                    let op = behind(path, &data);
                    self.transcript.borrow_mut().history.push(op);
                    disk.put(path.clone(), data, now);
                    self.event(format!("disk {slave}: put {path} ({size} bytes)"));
                } else {
                    let data = content(*seed, *size);
                    for i in 1..=*count {
                        if let Ok(p) = VPath::parse_absolute(&format!("{path}{i}")) {
                            let op = behind(&p, &data);
                            self.transcript.borrow_mut().history.push(op);
                            disk.put(p, data.clone(), now);
                        }
                    }
                    self.event(format!(
                        "disk {slave}: put {path}1 .. {path}{count} ({size} bytes each)"
                    ));
                }
            }
            StepKind::DiskCorrupt { slave, path } => {
                let done = self.disks.get(slave).is_some_and(|d| d.corrupt(path));
                self.event(format!(
                    "disk {slave}: corrupt {path}{}",
                    if done {
                        " (a byte flipped, its version kept)"
                    } else {
                        " (was not there)"
                    }
                ));
            }
            StepKind::DiskRemove { slave, path } => {
                let op = crate::history::Op {
                    client: format!("disk {slave}"),
                    path: path.to_string(),
                    effect: crate::history::Effect::Delete,
                    start: self.sim.elapsed(),
                    end: self.sim.elapsed(),
                    status: crate::history::Status::Maybe,
                };
                self.transcript.borrow_mut().history.push(op);
                let removed = self.disks.get(slave).is_some_and(|d| d.remove(path));
                self.event(format!(
                    "disk {slave}: remove {path}{}",
                    if removed { "" } else { " (was not there)" }
                ));
            }
            StepKind::ShowDb => self.show_db(),
            StepKind::ShowSlaves => self.show_slaves(),
            StepKind::ShowDisk(slave) => self.show_disk(slave),
        }
    }
}
