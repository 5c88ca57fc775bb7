//! The scripted client's data connections: opening one as the 227/229 or
//! PORT said, the data phase of a transfer (uploads, downloads, listings,
//! cuts), and a client process dying mid-transfer.

use super::*;

impl Client {
    pub(super) fn reset_data(&mut self) {
        self.pasv = None;
        self.data = None;
        if let Some((_, c)) = self.connecting.take() {
            c.abort();
        }
        self.listener = None;
        self.payload = None;
        self.read_cut = None;
        self.read_pace = None;
        self.rest = 0;
    }

    async fn open_data(&mut self) -> Option<SimStream> {
        let name = self.world.name.clone();
        if let Some(s) = self.data.take() {
            return Some(s);
        }
        if let Some((addr, connect)) = self.connecting.take() {
            return match tokio::time::timeout(DATA_TIMEOUT, connect).await {
                Ok(Ok(Ok(s))) => Some(s),
                Ok(Ok(Err(e))) => {
                    self.log(format!("{name}! data connect to {addr}: {}", e.kind()));
                    None
                }
                Ok(Err(_)) => None,
                Err(_) => {
                    self.log(format!("{name}! data connect to {addr} timed out"));
                    None
                }
            };
        }
        if let Some(l) = self.listener.take() {
            return match tokio::time::timeout(DATA_TIMEOUT, l.accept()).await {
                Ok(Ok((s, peer))) => {
                    self.log(format!("{name}: data accepted from {peer}"));
                    Some(s)
                }
                Ok(Err(e)) => {
                    self.log(format!("{name}! data accept: {}", e.kind()));
                    None
                }
                Err(_) => {
                    self.log(format!("{name}! no active data connection came"));
                    None
                }
            };
        }
        if let Some(addr) = self.pasv {
            // A connect to a host that went down is never answered; real
            // clients give up after a while, and so does this one.
            return match tokio::time::timeout(DATA_TIMEOUT, SimStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    self.log(format!("{name}: data connected to {addr}"));
                    Some(s)
                }
                Ok(Err(e)) => {
                    self.log(format!("{name}! data connect to {addr}: {}", e.kind()));
                    None
                }
                Err(_) => {
                    self.log(format!("{name}! data connect to {addr}: no answer"));
                    None
                }
            };
        }
        self.log(format!("{name}! no data connection set up"));
        None
    }

    /// Writes one chunk of an upload. A reply on the control connection
    /// meanwhile (the server gave up on the transfer, e.g. 426 when the
    /// slave died) ends the upload, as it would for a real client, instead
    /// of waiting on a peer that will never read again.
    async fn write_watching_control(
        &mut self,
        s: &mut SimStream,
        chunk: &[u8],
    ) -> Result<(), String> {
        let write = tokio::time::timeout(DATA_TIMEOUT, s.write_all(chunk));
        let Some(ctrl) = self.ctrl.as_mut() else {
            return match write.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.kind().to_string()),
                Err(_) => Err("stalled".into()),
            };
        };
        let mut tmp = [0u8; 1024];
        tokio::select! {
            biased;
            w = write => match w {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.kind().to_string()),
                Err(_) => Err("stalled".into()),
            },
            r = ctrl.r.read(&mut tmp) => match r {
                Ok(n) if n > 0 => {
                    ctrl.buf.extend_from_slice(&tmp[..n]);
                    Err("the server replied during the upload".into())
                }
                _ => Err("control connection closed".into()),
            },
        }
    }

    pub(super) async fn data_phase(&mut self, verb: &str, arg: &str, epoch: u64) {
        let name = self.world.name.clone();
        let stream = self.open_data().await;
        let upload = matches!(verb, "STOR" | "APPE" | "STOU");
        let mut received = Vec::new();
        let mut intended = None;
        // The bytes an upload really sent (for the history check).
        let mut sent_bytes: Option<Rc<Vec<u8>>> = None;
        // Only a download read to its end can be compared with the file.
        let mut complete_read = false;
        let mut cut = None;
        let mut cut_reached = false;
        // A download whose data connection went silent without its EOF.
        let mut stalled = None;
        let link_faults = self.world.link_faults.get();
        self.world.data_bytes.set(0);
        // A stalled data connection stays open until the final reply.
        let mut stalled_open = None;
        if let Some(mut s) = stream {
            if upload {
                let p = self.payload.unwrap_or(Payload {
                    size: 0,
                    seed: 1,
                    cut: None,
                    over: None,
                });
                let data = content(p.seed, p.size);
                cut = p.cut;
                let limit = p.cut.map_or(p.size, Cut::at).min(p.size) as usize;
                if matches!(cut, Some(Cut::Gone(_) | Cut::Reset(_) | Cut::Stall(_))) {
                    // Counted on the sending side: this one.
                    cut_reached = true;
                }
                let mut sent = 0usize;
                let mut failed = None;
                let pace = p.over.map(|over| Pacer::new(limit as u64, over));
                for chunk in data[..limit].chunks(CHUNK) {
                    match self.write_watching_control(&mut s, chunk).await {
                        Ok(()) => {
                            sent += chunk.len();
                            self.world.data_bytes.set(sent as u64);
                            if let Some(p) = &pace {
                                p.wait(sent as u64).await;
                            }
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                let how = match (failed, cut) {
                    (Some(e), _) => {
                        cut_reached = false;
                        format!(" (failed: {e})")
                    }
                    (None, Some(Cut::Reset(_))) => " (reset)".to_string(),
                    (None, Some(Cut::Gone(_))) => " (the client dies)".to_string(),
                    (None, Some(Cut::Stall(_))) => " (stalled)".to_string(),
                    (None, _) if limit < data.len() => {
                        cut_reached = true;
                        " (closed early)".to_string()
                    }
                    (None, _) => String::new(),
                };
                match (cut_reached, cut) {
                    (true, Some(Cut::Reset(_))) => s.reset(),
                    (true, Some(Cut::Gone(_))) => self.die(s, true).await,
                    (true, Some(Cut::Stall(_))) => stalled_open = Some(s),
                    _ => {
                        let _ = s.shutdown().await;
                        drop(s);
                    }
                }
                self.log(format!(
                    "{name}  data: sent {sent} bytes crc32={:08x}{how}",
                    crc32(&data[..sent])
                ));
                sent_bytes = Some(Rc::new(data[..sent].to_vec()));
                intended = Some(Rc::new(data));
            } else {
                cut = self.read_cut;
                // Close and abort count what this client read; reset, gone
                // and stall what the server sent.
                let (limit, sent_limit) = match self.read_cut {
                    Some(c @ (Cut::Close(_) | Cut::Abort(_))) => (c.at(), None),
                    Some(c) => (u64::MAX, Some(c.at())),
                    None => (u64::MAX, None),
                };
                let mut failed = None;
                let mut tmp = vec![0u8; CHUNK];
                let pace = self.read_pace.map(|p| Pacer::new(p.bytes, p.over));
                while (received.len() as u64) < limit {
                    if sent_limit.is_some_and(|n| s.peer_written() >= n) {
                        cut_reached = true;
                        break;
                    }
                    match tokio::time::timeout(DATA_TIMEOUT, s.read(&mut tmp)).await {
                        Ok(Ok(0)) => break,
                        Ok(Ok(n)) => {
                            let take = (n as u64).min(limit - received.len() as u64) as usize;
                            received.extend_from_slice(&tmp[..take]);
                            self.world.data_bytes.set(received.len() as u64);
                            if let Some(p) = &pace {
                                p.wait(received.len() as u64).await;
                            }
                        }
                        Ok(Err(e)) => {
                            failed = Some(e.kind().to_string());
                            break;
                        }
                        Err(_) => {
                            failed = Some("stalled".into());
                            stalled = Some(received.len());
                            break;
                        }
                    }
                }
                let how = match failed {
                    Some(e) => format!(" (failed: {e})"),
                    None if cut_reached => {
                        format!(" ({})", cut.map_or(String::new(), |c| c.to_string()))
                    }
                    None if (received.len() as u64) >= limit => {
                        cut_reached = true;
                        " (closed early)".to_string()
                    }
                    None => {
                        complete_read = true;
                        String::new()
                    }
                };
                match (cut_reached, cut) {
                    (true, Some(Cut::Reset(_))) => s.reset(),
                    (true, Some(Cut::Gone(_))) => self.die(s, false).await,
                    (true, Some(Cut::Stall(_))) => stalled_open = Some(s),
                    _ => drop(s),
                }
                self.log(format!(
                    "{name}  data: received {} bytes crc32={:08x}{how}",
                    received.len(),
                    crc32(&received)
                ));
                if matches!(verb, "LIST" | "NLST" | "MLSD") && received.len() <= SHOW_LISTING {
                    for l in String::from_utf8_lossy(&received).lines() {
                        self.log(format!("{name}  | {l}"));
                    }
                }
            }
        }
        let rest = self.rest;
        self.reset_data();
        if self.gone {
            // A dead client never hears the outcome: it may have happened.
            if matches!(verb, "STOR" | "APPE") {
                if let Some(data) = sent_bytes.clone() {
                    let offset = match verb {
                        "APPE" => Some(u64::MAX),
                        _ if rest > 0 => Some(rest),
                        _ => None,
                    };
                    self.hist(arg, Effect::Write { data, offset }, None);
                }
            }
            if let Some(intended) = intended {
                self.record_upload(verb, arg, intended, false);
            }
            return;
        }
        let aborting = cut_reached && matches!(cut, Some(Cut::Abort(_)));
        if aborting {
            // RFC 959 §4.1.3: the transfer's reply (426 if it was cut
            // short, 226 if it had already completed), then ABOR's own.
            self.log(format!("{name}> ABOR"));
            if self.send_bytes(b"ABOR\r\n").await {
                let result = self.final_reply(verb, epoch).await;
                if let Some(intended) = intended {
                    let done = result.as_ref().is_some_and(|(code, _)| *code == 226);
                    self.record_upload(verb, arg, intended, done);
                }
                if result.is_some() {
                    let _ = self.final_reply("ABOR", epoch).await;
                }
            }
            return;
        }
        let write_effect = |sent: &Option<Rc<Vec<u8>>>| {
            sent.clone().map(|data| Effect::Write {
                data,
                offset: match verb {
                    "APPE" => Some(u64::MAX),
                    _ if rest > 0 => Some(rest),
                    _ => None,
                },
            })
        };
        let reply = self.final_reply(verb, epoch).await;
        drop(stalled_open);
        let Some((code, lines)) = reply else {
            if matches!(verb, "STOR" | "APPE") {
                if let Some(e) = write_effect(&sent_bytes) {
                    self.hist(arg, e, None);
                }
            }
            if let Some(intended) = intended {
                self.record_upload(verb, arg, intended, false);
            }
            return;
        };
        if matches!(verb, "STOR" | "APPE") {
            if let Some(e) = write_effect(&sent_bytes) {
                let text = lines.last().cloned().unwrap_or_default();
                self.hist(arg, e, Some((code, &text)));
            }
        }
        if verb == "STOU" {
            if let (Some(name), Some(e)) = (self.stou_name.take(), write_effect(&sent_bytes)) {
                let text = lines.last().cloned().unwrap_or_default();
                let dir = match arg.trim() {
                    "" => self.cwd.to_string(),
                    a => a.to_string(),
                };
                let path = format!("{}/{name}", dir.trim_end_matches('/'));
                self.hist(&path, e, Some((code, &text)));
            }
        }
        if verb == "RETR" && code == 226 && complete_read {
            let data = Rc::new(received.clone());
            self.hist(arg, Effect::Read { data, offset: rest }, Some((code, "")));
        }
        if let Some(intended) = intended {
            self.record_upload(verb, arg, intended, code == 226);
        }
        if let Some(n) = stalled {
            // The server says the transfer is complete, so it closed the
            // data connection; only a cut link excuses an EOF that never
            // came (the simulated network never loses a FIN otherwise).
            if code == 226 && self.world.link_faults.get() == link_faults {
                self.violation(format!(
                    "226 on {verb} {arg}, but its data connection stayed open after {n} bytes"
                ));
            }
        }
    }

    /// The client process dies mid-transfer: its control connection
    /// closes, then (once the master has surely seen that) its data
    /// connection; nothing it would do later happens.
    /// The kernel of a killed process closes an upload's connection (no
    /// unread data) and resets a download's (unread data).
    async fn die(&mut self, mut data: SimStream, upload: bool) {
        let name = self.world.name.clone();
        self.log(format!("{name}: dies (control connection closed)"));
        self.gone = true;
        self.ctrl = None;
        tokio::time::sleep(self.world.latency).await;
        if upload {
            let _ = data.shutdown().await;
        } else {
            data.reset();
        }
    }

    fn record_upload(&self, verb: &str, arg: &str, intended: Rc<Vec<u8>>, completed: bool) {
        self.world
            .transcript
            .borrow_mut()
            .uploads
            .push(UploadRecord {
                client: self.world.name.clone(),
                verb: verb.to_string(),
                arg: arg.to_string(),
                intended,
                completed,
            });
    }
}

pub(super) fn is_data_verb(verb: &str) -> bool {
    matches!(
        verb,
        "RETR" | "STOR" | "APPE" | "STOU" | "LIST" | "NLST" | "MLSD"
    )
}

/// An even pace for a recorded slow transfer: `bytes` over `over` from
/// when the data phase began, on the simulation's clock (the one recorded
/// times and faults are placed on; a host's own timers run ahead of it
/// when the replay's step is under a millisecond).
struct Pacer {
    start: Duration,
    bytes: u64,
    over: Duration,
}

impl Pacer {
    fn new(bytes: u64, over: Duration) -> Pacer {
        Pacer {
            start: now(),
            bytes: bytes.max(1),
            over,
        }
    }

    /// Until `done` bytes are due: a millisecond of host time at a time,
    /// which is one simulation step whatever the step is.
    async fn wait(&self, done: u64) {
        let due = self.over.as_nanos() * u128::from(done.min(self.bytes)) / u128::from(self.bytes);
        let due = self.start + Duration::from_nanos(due as u64);
        while now() < due {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
