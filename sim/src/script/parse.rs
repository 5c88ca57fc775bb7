//! The parser of the scenario language: a `.scn` text into a
//! [`Scenario`]. One parser for every step of the language, a match arm per
//! keyword; split by keyword it would hide the shared grammar.

use super::*;

/// A scenario file's text, with the path as errors show it.
pub fn read_text(path: &Path) -> Result<(String, String), ParseError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ParseError {
        file: shown.clone(),
        line: 0,
        msg: format!("cannot read: {e}"),
    })?;
    Ok((shown, text))
}

pub fn parse_file(path: &Path) -> Result<Scenario, ParseError> {
    let (shown, text) = read_text(path)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| shown.clone());
    parse(&name, &shown, &text)
}

/// Sizes: a number with an optional binary suffix k, M, G (1024-based).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        (i, 't' | 'T') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Durations: `250ms`, `5s`, `1.5s`, `2m`; to the microsecond:
/// `12.345ms`, `1.000250s`, `80us`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    // A number with at most `digits` decimals, in units of 10^-digits.
    let fixed = |n: &str, digits: usize| -> Option<u64> {
        let (whole, frac) = n.split_once('.').unwrap_or((n, ""));
        if n.contains('.') && frac.is_empty() || frac.len() > digits {
            return None;
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) || whole.starts_with('+') {
            return None;
        }
        let whole: u64 = whole.parse().ok()?;
        let frac: u64 = format!("{frac:0<digits$}").parse().unwrap_or(0);
        whole
            .checked_mul(10u64.pow(digits as u32))?
            .checked_add(frac)
    };
    if let Some(n) = s.strip_suffix("us") {
        return fixed(n, 0).map(Duration::from_micros);
    }
    if let Some(n) = s.strip_suffix("ms") {
        return fixed(n, 3).map(Duration::from_micros);
    }
    if let Some(n) = s.strip_suffix('s') {
        return fixed(n, 6).map(Duration::from_micros);
    }
    if let Some(n) = s.strip_suffix('m') {
        return n.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60));
    }
    None
}

/// A stable default content seed for a path.
pub fn path_seed(path: &VPath) -> u64 {
    u64::from(crate::env::crc32(path.as_str().as_bytes()))
}

struct Parser<'a> {
    file: &'a str,
    line: usize,
}

impl Parser<'_> {
    fn err(&self, msg: impl Into<String>) -> ParseError {
        ParseError {
            file: self.file.to_string(),
            line: self.line,
            msg: msg.into(),
        }
    }

    fn name(&self, s: &str, what: &str) -> Result<String, ParseError> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && s.as_bytes()[0].is_ascii_alphabetic();
        if !ok {
            return Err(self.err(format!(
                "invalid {what} name '{s}': use letters, digits, '-' or '_', starting with a letter"
            )));
        }
        Ok(s.to_string())
    }

    fn size(&self, s: &str) -> Result<u64, ParseError> {
        parse_size(s).ok_or_else(|| self.err(format!("invalid size '{s}' (e.g. 100, 64k, 5M, 2G)")))
    }

    fn duration(&self, s: &str) -> Result<Duration, ParseError> {
        parse_duration(s)
            .ok_or_else(|| self.err(format!("invalid duration '{s}' (e.g. 250ms, 5s, 2m)")))
    }

    fn vpath(&self, s: &str) -> Result<VPath, ParseError> {
        VPath::parse_absolute(s).map_err(|e| self.err(format!("invalid path '{s}': {e}")))
    }

    fn number(&self, s: &str, what: &str) -> Result<u64, ParseError> {
        s.parse()
            .map_err(|_| self.err(format!("invalid {what} '{s}': expected a number")))
    }

    fn key_value<'s>(&self, s: &'s str) -> Result<(&'s str, &'s str), ParseError> {
        s.split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .ok_or_else(|| self.err(format!("expected key=value, got '{s}'")))
    }

    fn args<const N: usize>(&self, words: &[&str], usage: &str) -> Result<(), ParseError> {
        if words.len() != N {
            return Err(self.err(format!("usage: {usage}")));
        }
        Ok(())
    }
}

/// Expands `each A..B LINE` into one line per number, `%i` replaced.
fn expand(p: &Parser, line: &str) -> Result<Vec<String>, ParseError> {
    let Some(rest) = line.strip_prefix("each ") else {
        return Ok(vec![line.to_string()]);
    };
    let rest = rest.trim_start();
    let (range, body) = rest
        .split_once(char::is_whitespace)
        .ok_or_else(|| p.err("usage: each FIRST..LAST LINE"))?;
    let (a, b) = range
        .split_once("..")
        .ok_or_else(|| p.err(format!("invalid range '{range}': expected FIRST..LAST")))?;
    let a = p.number(a, "range start")?;
    let b = p.number(b, "range end")?;
    if b < a || b - a >= 1000 {
        return Err(p.err(format!(
            "range '{range}' must be ascending and at most 1000 long"
        )));
    }
    Ok((a..=b)
        .map(|i| body.trim().replace("%i", &i.to_string()))
        .collect())
}

/// `NAME< TEXT`: an expected reply line; `#` belongs to the text. Returns
/// the name and the text (one space after `<` is the separator).
fn expect_parts(raw: &str) -> Option<(&str, &str)> {
    let s = raw.trim_start();
    let at = s.find('<')?;
    let head = &s[..at];
    let is_name = !head.is_empty()
        && head
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !is_name {
        return None;
    }
    let rest = &s[at + 1..];
    Some((head, rest.strip_prefix(' ').unwrap_or(rest).trim_end()))
}

/// `[each R] [&] NAME> ...`: a line whose `#` belongs to the command.
fn is_command_line(raw: &str) -> bool {
    let mut s = raw.trim_start();
    if let Some(rest) = s.strip_prefix("each ") {
        s = rest
            .trim_start()
            .split_once(char::is_whitespace)
            .map_or("", |(_, b)| b)
            .trim_start();
    }
    s = s.strip_prefix('&').unwrap_or(s).trim_start();
    match s.split_once('>') {
        Some((head, _)) => {
            !head.is_empty() && !head.contains(|c: char| c.is_whitespace() || c == '#' || c == ':')
        }
        None => false,
    }
}

pub fn parse(name: &str, file: &str, text: &str) -> Result<Scenario, ParseError> {
    let mut sc = Scenario {
        name: name.to_string(),
        path: file.to_string(),
        topology: Topology::default(),
        steps: Vec::new(),
        expected_violations: Vec::new(),
        expectations: Vec::new(),
    };
    let mut p = Parser { file, line: 0 };
    for (i, raw) in text.lines().enumerate() {
        p.line = i + 1;
        if !is_command_line(raw) {
            if let Some((client, text)) = expect_parts(raw) {
                let client = p.name(client, "client")?;
                if RESERVED.contains(&client.as_str()) {
                    return Err(p.err(format!("'{client}' is reserved and cannot be a client")));
                }
                sc.expectations.push(Expectation {
                    line: p.line,
                    client,
                    text: text.to_string(),
                });
                continue;
            }
        }
        // A command line keeps everything after `>`, `#` included.
        let line = if is_command_line(raw) {
            raw.trim()
        } else {
            raw.split_once('#').map_or(raw, |(a, _)| a).trim()
        };
        if line.is_empty() {
            continue;
        }
        for l in expand(&p, line)? {
            parse_line(&p, &mut sc, &l)?;
        }
    }
    check(&sc, file)?;
    Ok(sc)
}

fn parse_line(p: &Parser, sc: &mut Scenario, line: &str) -> Result<(), ParseError> {
    // Client steps: `[&] NAME> COMMAND` or `[&] NAME: ACTION ...`.
    let (background, body) = match line.strip_prefix('&') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, line),
    };
    let head_end = body.find(['>', ':']);
    if let Some(at) = head_end {
        let head = &body[..at];
        if !head.is_empty() && !head.contains(char::is_whitespace) {
            let client = p.name(head, "client")?;
            if RESERVED.contains(&client.as_str()) {
                return Err(p.err(format!("'{client}' is reserved and cannot be a client")));
            }
            let rest = &body[at + 1..];
            let op = if body.as_bytes()[at] == b'>' {
                let cmd = rest.strip_prefix(' ').unwrap_or(rest);
                ClientOp::Command(cmd.to_string())
            } else {
                parse_client_action(p, rest.trim())?
            };
            sc.topology.clients.insert(client.clone());
            sc.steps.push(Step {
                line: p.line,
                kind: StepKind::Client {
                    client,
                    op,
                    background,
                },
            });
            return Ok(());
        }
    }
    if background {
        return Err(p.err("'&' only goes before a client step (NAME> ... or NAME: ...)"));
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let step = |kind| Step { line: p.line, kind };
    match words[0] {
        "slave" => {
            if words.len() < 2 || words.len() > 3 {
                return Err(p.err("usage: slave NAME [free=SIZE | avail=SIZE]"));
            }
            let name = p.name(words[1], "slave")?;
            let mut free = 1 << 30;
            let mut avail = None;
            if let Some(kv) = words.get(2) {
                match p.key_value(kv)? {
                    ("free", v) => free = p.size(v)?,
                    ("avail", v) => avail = Some(p.size(v)?),
                    (k, _) => return Err(p.err(format!("unknown slave option '{k}'"))),
                }
            }
            sc.topology.slaves.push(SlaveDecl { name, free, avail });
        }
        "file" => {
            if words.len() < 4 {
                return Err(p.err("usage: file SLAVE[,SLAVE...] PATH size=SIZE [seed=N]"));
            }
            let slaves = words[1]
                .split(',')
                .map(|s| p.name(s, "slave"))
                .collect::<Result<Vec<_>, _>>()?;
            let path = p.vpath(words[2])?;
            let mut size = None;
            let mut seed = path_seed(&path);
            for kv in &words[3..] {
                match p.key_value(kv)? {
                    ("size", v) => size = Some(p.size(v)?),
                    ("seed", v) => seed = p.number(v, "seed")?,
                    (k, _) => return Err(p.err(format!("unknown file option '{k}'"))),
                }
            }
            let size = size.ok_or_else(|| p.err("file needs size=SIZE"))?;
            sc.topology.files.push(FileDecl {
                slaves,
                path,
                size,
                seed,
                line: p.line,
            });
        }
        "dir" | "absent" => {
            p.args::<2>(&words, &format!("{} PATH", words[0]))?;
            let decl = DirDecl {
                path: p.vpath(words[1])?,
                line: p.line,
            };
            if words[0] == "dir" {
                sc.topology.dirs.push(decl);
            } else {
                sc.topology.absent.push(decl);
            }
        }
        "ftps" => {
            p.args::<1>(&words, "ftps")?;
            sc.topology.ftps = true;
        }
        "user" => {
            if words.len() < 3 {
                return Err(p.err("usage: user NAME PASSWORD [admin] [home=PATH]"));
            }
            let mut u = UserDecl {
                name: words[1].to_string(),
                password: words[2].to_string(),
                admin: false,
                home: "/".into(),
            };
            for w in &words[3..] {
                if *w == "admin" {
                    u.admin = true;
                } else {
                    match p.key_value(w)? {
                        ("home", v) => u.home = v.to_string(),
                        (k, _) => return Err(p.err(format!("unknown user option '{k}'"))),
                    }
                }
            }
            sc.topology.users.push(u);
        }
        "config" | "slave-config" => {
            if words.len() != 2 {
                return Err(p.err(format!("usage: {} key=value", words[0])));
            }
            let (k, v) = p.key_value(words[1])?;
            let list = if words[0] == "config" {
                &mut sc.topology.master_config
            } else {
                &mut sc.topology.slave_config
            };
            list.push((k.to_string(), v.to_string()));
        }
        "expect-violation" => {
            let text = line["expect-violation".len()..].trim();
            if text.is_empty() {
                return Err(p.err("usage: expect-violation TEXT"));
            }
            sc.expected_violations.push(text.to_string());
        }
        "wait" => {
            if words.len() < 2 {
                return Err(p.err("usage: wait CLIENT... | wait all"));
            }
            let names = words[1..]
                .iter()
                .map(|w| {
                    if *w == "all" {
                        Ok("all".to_string())
                    } else {
                        p.name(w, "client")
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            sc.steps.push(step(StepKind::Wait(names)));
        }
        "sleep" => {
            p.args::<2>(&words, "sleep DURATION")?;
            sc.steps.push(step(StepKind::Sleep(p.duration(words[1])?)));
        }
        "at" => {
            p.args::<2>(&words, "at DURATION")?;
            sc.steps.push(step(StepKind::At(p.duration(words[1])?)));
        }
        "crash" | "restart" => {
            p.args::<2>(&words, &format!("{} HOST", words[0]))?;
            let h = p.name(words[1], "host")?;
            sc.steps.push(step(if words[0] == "crash" {
                StepKind::Crash(h)
            } else {
                StepKind::Restart(h)
            }));
        }
        "wipe-store" => {
            p.args::<2>(&words, "wipe-store master")?;
            if words[1] != "master" {
                return Err(p.err("wipe-store takes 'master'"));
            }
            sc.steps.push(step(StepKind::WipeStore));
        }
        "partition" | "repair" | "hold" | "release" => {
            p.args::<3>(&words, &format!("{} HOST HOST", words[0]))?;
            let a = p.name(words[1], "host")?;
            let b = p.name(words[2], "host")?;
            sc.steps.push(step(match words[0] {
                "partition" => StepKind::Partition(a, b),
                "repair" => StepKind::Repair(a, b),
                "hold" => StepKind::Hold(a, b),
                _ => StepKind::Release(a, b),
            }));
        }
        "latency" => {
            p.args::<4>(&words, "latency HOST HOST DURATION")?;
            sc.steps.push(step(StepKind::Latency(
                p.name(words[1], "host")?,
                p.name(words[2], "host")?,
                p.duration(words[3])?,
            )));
        }
        "await" => parse_await(p, sc, &words)?,
        "disk" => {
            if words.len() < 4 {
                return Err(p.err(
                    "usage: disk SLAVE put PATH size=SIZE [seed=N] [count=N] | disk SLAVE remove PATH",
                ));
            }
            let slave = p.name(words[1], "slave")?;
            let path = p.vpath(words[3])?;
            match words[2] {
                "put" => {
                    let mut size = None;
                    let mut seed = path_seed(&path);
                    let mut count = 0;
                    for kv in &words[4..] {
                        match p.key_value(kv)? {
                            ("size", v) => size = Some(p.size(v)?),
                            ("seed", v) => seed = p.number(v, "seed")?,
                            ("count", v) => {
                                count = p.number(v, "count")?;
                                if !(1..=1_000_000).contains(&count) {
                                    return Err(p.err("count must be 1 to 1000000"));
                                }
                            }
                            (k, _) => return Err(p.err(format!("unknown disk option '{k}'"))),
                        }
                    }
                    let size = size.ok_or_else(|| p.err("disk put needs size=SIZE"))?;
                    sc.steps.push(step(StepKind::DiskPut {
                        slave,
                        path,
                        size,
                        seed,
                        count,
                    }));
                }
                "remove" => {
                    p.args::<4>(&words, "disk SLAVE remove PATH")?;
                    sc.steps.push(step(StepKind::DiskRemove { slave, path }));
                }
                "corrupt" => {
                    p.args::<4>(&words, "disk SLAVE corrupt PATH")?;
                    sc.steps.push(step(StepKind::DiskCorrupt { slave, path }));
                }
                other => {
                    return Err(p.err(format!(
                        "unknown disk action '{other}' (put, remove, corrupt)"
                    )))
                }
            }
        }
        "show" => {
            let usage = "show db | show slaves | show disk SLAVE";
            let kind = match words.get(1..) {
                Some(["db"]) => StepKind::ShowDb,
                Some(["slaves"]) => StepKind::ShowSlaves,
                Some(["disk", slave]) => StepKind::ShowDisk(p.name(slave, "slave")?),
                _ => return Err(p.err(format!("usage: {usage}"))),
            };
            sc.steps.push(step(kind));
        }
        other => return Err(p.err(format!("unknown statement '{other}'"))),
    }
    Ok(())
}

fn parse_await(p: &Parser, sc: &mut Scenario, words: &[&str]) -> Result<(), ParseError> {
    // await slave NAME online|offline|remerging [within DUR]
    // await CLIENT bytes SIZE [within DUR]
    let usage = "usage: await slave NAME online|offline|remerging [within DURATION] | await CLIENT bytes SIZE [within DURATION]";
    if words.len() != 4 && words.len() != 6 {
        return Err(p.err(usage));
    }
    let within = if words.len() == 6 {
        if words[4] != "within" {
            return Err(p.err(usage));
        }
        p.duration(words[5])?
    } else {
        Duration::from_secs(60)
    };
    let kind = if words[1] == "slave" {
        let state = match words[3] {
            "online" => SlaveStateWanted::Online,
            "offline" => SlaveStateWanted::Offline,
            "remerging" => SlaveStateWanted::Remerging,
            _ => return Err(p.err(usage)),
        };
        StepKind::AwaitSlave {
            slave: p.name(words[2], "slave")?,
            state,
            within,
        }
    } else if words[2] == "bytes" {
        let client = p.name(words[1], "client")?;
        sc.topology.clients.insert(client.clone());
        StepKind::AwaitBytes {
            client,
            bytes: p.size(words[3])?,
            within,
        }
    } else {
        return Err(p.err(usage));
    };
    sc.steps.push(Step { line: p.line, kind });
    Ok(())
}

fn parse_client_action(p: &Parser, rest: &str) -> Result<ClientOp, ParseError> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let usage = "client actions: connect, close, send-long N, send-hex HEX..., data connect [ignore-address], data listen, data send SIZE [seed=N] [CUT=SIZE] [over=DURATION], data read [CUT=SIZE] [bytes=SIZE] [over=DURATION] (CUT: close-after, abort-after, reset-after, gone-after, stall-after), pin PATH|- SLAVE, pin-stou NAME";
    match words.as_slice() {
        ["connect"] => Ok(ClientOp::Connect),
        ["close"] => Ok(ClientOp::Close),
        ["send-long", n] => {
            let n = p.size(n)?;
            if n > 1 << 20 {
                return Err(p.err("send-long is limited to 1M"));
            }
            let mut bytes = vec![b'A'; n as usize];
            bytes.extend_from_slice(b"\r\n");
            Ok(ClientOp::Raw(bytes))
        }
        ["send-hex", hex @ ..] if !hex.is_empty() => {
            let joined: String = hex.concat();
            if !joined.len().is_multiple_of(2) {
                return Err(p.err("send-hex needs an even number of hex digits"));
            }
            let bytes = (0..joined.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&joined[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| p.err(format!("invalid hex '{joined}'")))?;
            Ok(ClientOp::Raw(bytes))
        }
        ["data", "connect"] => Ok(ClientOp::DataConnect),
        ["data", "connect", "ignore-address"] => Ok(ClientOp::DataConnectIgnoringAddress),
        ["data", "listen"] => Ok(ClientOp::DataListen),
        ["data", "send", size, opts @ ..] => {
            let mut payload = Payload {
                size: p.size(size)?,
                seed: 1,
                cut: None,
                over: None,
            };
            for kv in opts {
                match p.key_value(kv)? {
                    ("seed", v) => payload.seed = p.number(v, "seed")?,
                    ("over", v) => payload.over = Some(p.duration(v)?),
                    (k, v) => match Cut::parse(k, p.size(v)?) {
                        Some(cut) => payload.cut = Some(cut),
                        None => return Err(p.err(format!("unknown data send option '{k}'"))),
                    },
                }
            }
            if payload.size > 256 << 20 {
                return Err(p.err("uploads are limited to 256M"));
            }
            Ok(ClientOp::DataSend(payload))
        }
        ["data", "read", opts @ ..] if !opts.is_empty() => {
            let mut plan = ReadPlan::default();
            let (mut bytes, mut over) = (None, None);
            for kv in opts {
                match p.key_value(kv)? {
                    ("bytes", v) => bytes = Some(p.size(v)?),
                    ("over", v) => over = Some(p.duration(v)?),
                    (k, v) => match Cut::parse(k, p.size(v)?) {
                        Some(cut) => plan.cut = Some(cut),
                        None => return Err(p.err(format!("unknown data read option '{k}'"))),
                    },
                }
            }
            if let Some(over) = over {
                let Some(bytes) = bytes.or(plan.cut.map(Cut::at)) else {
                    return Err(
                        p.err("data read over=DURATION needs bytes=SIZE (or a cut) to pace by")
                    );
                };
                plan.pace = Some(Pace { bytes, over });
            }
            Ok(ClientOp::DataRead(plan))
        }
        ["pin", path, slave] => Ok(ClientOp::PinSlave {
            path: match *path {
                "-" => None,
                p2 => Some(p.vpath(p2)?),
            },
            slave: p.name(slave, "slave")?,
        }),
        ["pin-stou", name] => Ok(ClientOp::PinStou(name.to_string())),
        _ => Err(p.err(format!("unknown client action '{rest}'; {usage}"))),
    }
}

/// Cross-line checks: names are declared, unique, and not mixed up.
fn check(sc: &Scenario, file: &str) -> Result<(), ParseError> {
    let err = |line: usize, msg: String| ParseError {
        file: file.to_string(),
        line,
        msg,
    };
    let t = &sc.topology;
    let mut hosts = BTreeSet::new();
    for s in &t.slaves {
        if RESERVED.contains(&s.name.as_str()) {
            return Err(err(
                0,
                format!("'{}' is reserved and cannot be a slave", s.name),
            ));
        }
        if !hosts.insert(s.name.clone()) {
            return Err(err(0, format!("slave '{}' is declared twice", s.name)));
        }
    }
    for c in &t.clients {
        if hosts.contains(c) {
            return Err(err(0, format!("'{c}' is both a slave and a client")));
        }
    }
    if t.slaves.is_empty() {
        return Err(err(0, "a scenario needs at least one 'slave NAME'".into()));
    }
    let is_slave = |n: &str| t.slaves.iter().any(|s| s.name == n);
    for f in &t.files {
        for s in &f.slaves {
            if !is_slave(s) {
                return Err(err(
                    0,
                    format!("file {} is on undeclared slave '{s}'", f.path),
                ));
            }
        }
    }
    for e in &sc.expectations {
        if !t.clients.contains(&e.client) {
            return Err(err(
                e.line,
                format!("expected reply for '{}', which has no steps", e.client),
            ));
        }
    }
    let is_host = |n: &str| n == "master" || is_slave(n) || t.clients.contains(n);
    for st in &sc.steps {
        let bad = |n: &str| err(st.line, format!("unknown host '{n}'"));
        match &st.kind {
            StepKind::Crash(h) | StepKind::Restart(h) => {
                if !is_host(h) {
                    return Err(bad(h));
                }
                if t.clients.contains(h) && matches!(st.kind, StepKind::Restart(_)) {
                    return Err(err(st.line, format!("client '{h}' cannot be restarted")));
                }
            }
            StepKind::Partition(a, b)
            | StepKind::Repair(a, b)
            | StepKind::Hold(a, b)
            | StepKind::Release(a, b)
            | StepKind::Latency(a, b, _) => {
                for h in [a, b] {
                    if !is_host(h) {
                        return Err(bad(h));
                    }
                }
                if a == b {
                    return Err(err(st.line, "needs two different hosts".into()));
                }
            }
            StepKind::AwaitSlave { slave, .. }
            | StepKind::ShowDisk(slave)
            | StepKind::DiskPut { slave, .. }
            | StepKind::DiskRemove { slave, .. }
            | StepKind::DiskCorrupt { slave, .. }
                if !is_slave(slave) =>
            {
                return Err(err(st.line, format!("unknown slave '{slave}'")));
            }
            StepKind::Wait(names) => {
                for n in names {
                    if n != "all" && !t.clients.contains(n) {
                        return Err(err(st.line, format!("unknown client '{n}'")));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}
