//! The history check: what every client was told, held against what any
//! correct cluster could have done (Jepsen's idea, on a deterministic
//! network). Clients record each file operation with the simulated times
//! of its command and its final reply; after the run, per path:
//!
//! - every RETR that got `226` delivered the bytes of a version that was
//!   current at some instant between its command and its reply;
//! - a path whose DELE or rename got `250` never shows its old content
//!   again (unless written again);
//! - an acknowledged STOR/APPE is never lost unless a later acknowledged
//!   command replaced or removed it;
//! - with `allow_overwrite=false`, no two STORs of one name both succeed;
//! - at the end the master lists exactly a possible final state, and no
//!   online slave keeps another content under a listed name.
//!
//! "Possible" is computed from real-time order only: an operation that
//! ended before another started happened before it; overlapping ones may
//! have happened in either order. Operations whose outcome the client could
//! not know (no reply, a reply saying the outcome is unknown) may or may
//! not have happened.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use crate::env::crc32;

/// How an operation ended for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 226/250: it happened.
    Done,
    /// Refused or failed: it must have left nothing.
    Failed,
    /// No reply, or a reply saying the outcome is unknown.
    Maybe,
}

#[derive(Debug, Clone)]
pub enum Effect {
    /// STOR (`offset: None`), REST+STOR (`Some(n)`), APPE (`Some(u64::MAX)`).
    Write {
        data: Rc<Vec<u8>>,
        offset: Option<u64>,
    },
    Delete,
    /// The path was renamed to `to`.
    RenameTo(String),
    /// RETR from `offset` delivered `data` (read to its end).
    Read {
        data: Rc<Vec<u8>>,
        offset: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Op {
    pub client: String,
    pub path: String,
    pub effect: Effect,
    pub start: Duration,
    pub end: Duration,
    pub status: Status,
}

/// A content, or the path being absent.
type Content = Option<Rc<Vec<u8>>>;

fn same(a: &Content, b: &Content) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => x.len() == y.len() && (Rc::ptr_eq(x, y) || x == y),
        _ => false,
    }
}

fn show(c: &Content) -> String {
    match c {
        None => "absent".into(),
        Some(d) => format!("{} bytes crc32 {:08x}", d.len(), crc32(d)),
    }
}

/// One source of a path's content: an event that may set it (its
/// contents are computed only for sources that survive the timing filter).
#[derive(Clone, Copy)]
struct Source {
    start: Duration,
    end: Duration,
    /// Acknowledged (else it may or may not have happened).
    done: bool,
    /// `None`: the initial state; else the operation's index.
    op: Option<usize>,
}

/// Contents by (operation, "at its own path"): a rename leaves nothing at
/// its source and its source's content at its target.
type Memo = BTreeMap<(usize, bool), Rc<Vec<Content>>>;

/// All operations of a run plus the files present at its start.
pub struct History {
    ops: Vec<Op>,
    initial: BTreeMap<String, Rc<Vec<u8>>>,
    /// The contents each operation may leave at its target, once computed
    /// (each depends only on earlier or overlapping operations: computing
    /// them once makes long chains of appends and renames linear).
    memo: RefCell<Memo>,
    /// Operations being computed (overlapping appends may depend on each
    /// other: such a cycle contributes nothing further).
    busy: RefCell<BTreeSet<usize>>,
    /// Busy operations a computation ran into: a result computed while an
    /// outer operation was cut out is valid only inside that computation,
    /// so it is not remembered.
    hits: RefCell<BTreeSet<usize>>,
    /// Memo entries whose candidates were cut at [`MAX_CANDIDATES`].
    truncated: RefCell<BTreeSet<(usize, bool)>>,
    /// Set when the query being answered met a cut list: a content it does
    /// not find may be one that was cut, so it proves nothing.
    cut: std::cell::Cell<bool>,
    /// Indexes of the operations that touch each path (as source or as
    /// rename target), in order.
    by_path: BTreeMap<String, Vec<usize>>,
}

/// Bound on candidate contents per path (appends multiply them). A read
/// or final state checked against a list cut at this bound is undecided,
/// never a violation: the content it found may be one that was cut.
const MAX_CANDIDATES: usize = 64;

impl History {
    pub fn new(mut ops: Vec<Op>, initial: BTreeMap<String, Rc<Vec<u8>>>) -> History {
        // A rename onto its own name changes nothing (rename(2); RNTO
        // answers 250 and leaves the file as it was).
        ops.retain(|op| !matches!(&op.effect, Effect::RenameTo(to) if *to == op.path));
        let mut by_path: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            by_path.entry(op.path.clone()).or_default().push(i);
            if let Effect::RenameTo(to) = &op.effect {
                by_path.entry(to.clone()).or_default().push(i);
            }
        }
        History {
            ops,
            initial,
            by_path,
            memo: RefCell::new(BTreeMap::new()),
            busy: RefCell::new(BTreeSet::new()),
            hits: RefCell::new(BTreeSet::new()),
            truncated: Default::default(),
            cut: Default::default(),
        }
    }

    /// The events that may set `path`'s content, known up to `until`
    /// (`exclude`: an operation whose own base is being computed).
    fn sources(&self, path: &str, until: Duration, exclude: Option<usize>) -> Vec<Source> {
        let mut out = vec![Source {
            start: Duration::ZERO,
            end: Duration::ZERO,
            done: true,
            op: None,
        }];
        let touching = self.by_path.get(path).map(Vec::as_slice).unwrap_or(&[]);
        for &i in touching {
            let op = &self.ops[i];
            if op.status == Status::Failed || op.start > until || Some(i) == exclude {
                continue;
            }
            let sets = match &op.effect {
                Effect::Write { .. } | Effect::Delete => op.path == path,
                Effect::RenameTo(to) => op.path == path || to == path,
                Effect::Read { .. } => false,
            };
            if sets {
                out.push(Source {
                    start: op.start,
                    end: op.end,
                    done: op.status == Status::Done,
                    op: Some(i),
                });
            }
        }
        out
    }

    /// The contents a source may leave at `path`.
    fn contents(&self, path: &str, s: &Source) -> Rc<Vec<Content>> {
        let Some(i) = s.op else {
            return Rc::new(vec![self.initial.get(path).cloned()]);
        };
        // A rename leaves nothing at its source and its source's content at
        // its target: the two are kept apart.
        let key = (i, self.ops[i].path == path);
        if let Some(c) = self.memo.borrow().get(&key) {
            if self.truncated.borrow().contains(&key) {
                self.cut.set(true);
            }
            return c.clone();
        }
        if !self.busy.borrow_mut().insert(i) {
            self.hits.borrow_mut().insert(i);
            return Rc::new(Vec::new());
        }
        let outer = std::mem::take(&mut *self.hits.borrow_mut());
        let cut_before = self.cut.replace(false);
        let c = Rc::new(self.compute(path, i));
        let was_cut = self.cut.get();
        self.cut.set(cut_before || was_cut);
        self.busy.borrow_mut().remove(&i);
        let mut hits = self.hits.borrow_mut();
        // Its own cycle cut is part of its definition (its base excludes
        // it); another busy operation's is not.
        hits.remove(&i);
        if hits.is_empty() {
            self.memo.borrow_mut().insert(key, c.clone());
            if was_cut {
                self.truncated.borrow_mut().insert(key);
            }
        }
        hits.extend(outer);
        c
    }

    fn compute(&self, path: &str, i: usize) -> Vec<Content> {
        let op = &self.ops[i];
        match &op.effect {
            Effect::Write { data, offset } => match offset {
                None => vec![Some(data.clone())],
                Some(o) => self
                    .candidates_excluding(path, op.start, op.end, Some(i))
                    .into_iter()
                    .map(|base| {
                        let mut v = base.map(|b| b.as_ref().clone()).unwrap_or_default();
                        if *o != u64::MAX {
                            v.resize(*o as usize, 0);
                        }
                        v.extend_from_slice(data);
                        Some(Rc::new(v))
                    })
                    .collect(),
            },
            Effect::Delete => vec![None],
            Effect::RenameTo(_) if op.path == path => vec![None],
            Effect::RenameTo(_) => self.candidates(&op.path, op.start, op.end),
            Effect::Read { .. } => Vec::new(),
        }
    }

    /// Contents `path` may have had at some instant in `[from, to]`.
    pub fn candidates(&self, path: &str, from: Duration, to: Duration) -> Vec<Content> {
        self.candidates_excluding(path, from, to, None)
    }

    fn candidates_excluding(
        &self,
        path: &str,
        from: Duration,
        to: Duration,
        exclude: Option<usize>,
    ) -> Vec<Content> {
        let sources = self.sources(path, to, exclude);
        // The latest end of an acknowledged source that began after each
        // source ended is what may replace it: sort once by start.
        let mut out: Vec<Content> = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            // It may have happened before `to`...
            if s.start > to {
                continue;
            }
            // ...and not be certainly replaced before `from`: by an
            // acknowledged source that began after it ended and ended
            // before `from`.
            let replaced = sources
                .iter()
                .enumerate()
                .any(|(j, r)| j != i && r.done && r.start > s.end && r.end < from);
            if replaced {
                continue;
            }
            for c in self.contents(path, s).iter() {
                if !out.iter().any(|o| same(o, c)) {
                    if out.len() < MAX_CANDIDATES {
                        out.push(c.clone());
                    } else {
                        self.cut.set(true);
                    }
                }
            }
        }
        out
    }

    /// Checks every rule; `final_state` is what the master lists at the
    /// end (path -> content read from a holder, `None`: not listed), and
    /// `disks` what each online slave keeps under listed names.
    pub fn check(
        &self,
        end: Duration,
        allow_overwrite: bool,
        final_state: &BTreeMap<String, Content>,
    ) -> Vec<String> {
        let mut v = Vec::new();
        // Reads.
        for op in &self.ops {
            let Effect::Read { data, offset } = &op.effect else {
                continue;
            };
            if op.status != Status::Done {
                continue;
            }
            self.cut.set(false);
            let cands = self.candidates(&op.path, op.start, op.end);
            // Too many possible contents to list them all: undecided.
            if self.cut.get() {
                continue;
            }
            let ok = cands.iter().any(|c| match c {
                Some(full) => {
                    let start = (*offset as usize).min(full.len());
                    full[start..] == data[..]
                }
                None => false,
            });
            if !ok {
                v.push(format!(
                    "{}: RETR {} (226 at {:?}) delivered {} bytes crc32 {:08x}, not a version current during it (possible: {})",
                    op.client,
                    op.path,
                    op.end,
                    data.len(),
                    crc32(data),
                    cands.iter().map(show).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        // Final state of every path anyone touched or that exists.
        let mut paths: BTreeSet<&str> = self.ops.iter().map(|o| o.path.as_str()).collect();
        for op in &self.ops {
            if let Effect::RenameTo(to) = &op.effect {
                paths.insert(to);
            }
        }
        paths.extend(self.initial.keys().map(String::as_str));
        paths.extend(final_state.keys().map(String::as_str));
        for p in paths {
            let got = final_state.get(p).cloned().flatten();
            self.cut.set(false);
            let cands = self.candidates(p, end, end);
            if !self.cut.get() && !cands.iter().any(|c| same(c, &got)) {
                v.push(format!(
                    "{p}: at the end the master has it {}, which no sequence of the acknowledged operations leaves (possible: {})",
                    show(&got),
                    cands.iter().map(show).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        // Acknowledged appends are not lost.
        for a in &self.ops {
            let Effect::Write {
                data,
                offset: Some(u64::MAX),
            } = &a.effect
            else {
                continue;
            };
            if a.status != Status::Done || data.is_empty() {
                continue;
            }
            // Only when nothing that could come after it replaced the file.
            let touching = self.by_path.get(&a.path).map(Vec::as_slice).unwrap_or(&[]);
            let replaced = touching.iter().map(|&i| &self.ops[i]).any(|r| {
                r.status != Status::Failed
                    && r.end > a.start
                    && ((r.path == a.path
                        && match &r.effect {
                            Effect::Delete | Effect::RenameTo(_) => true,
                            Effect::Write { offset, .. } => *offset != Some(u64::MAX),
                            Effect::Read { .. } => false,
                        })
                        || matches!(&r.effect, Effect::RenameTo(to) if *to == a.path))
            });
            if replaced {
                continue;
            }
            let found = final_state
                .get(&a.path)
                .cloned()
                .flatten()
                .is_some_and(|f| f.windows(data.len()).any(|w| w == &data[..]));
            if !found {
                v.push(format!(
                    "{}: APPE {} of {} bytes got 226 at {:?} but its bytes are not in the file at the end",
                    a.client,
                    a.path,
                    data.len(),
                    a.end
                ));
            }
        }
        // No two STORs of one name both succeed when overwriting is off.
        if !allow_overwrite {
            let stors: Vec<&Op> = self
                .ops
                .iter()
                .filter(|o| {
                    o.status == Status::Done
                        && matches!(o.effect, Effect::Write { offset: None, .. })
                })
                .collect();
            for (i, a) in stors.iter().enumerate() {
                for b in &stors[i + 1..] {
                    if a.path != b.path {
                        continue;
                    }
                    let (first, second) = if a.start <= b.start { (a, b) } else { (b, a) };
                    // A removal in between makes the second a new file.
                    let removed = self.ops.iter().any(|r| {
                        r.status == Status::Done
                            && r.path == first.path
                            && matches!(r.effect, Effect::Delete | Effect::RenameTo(_))
                            && r.end <= second.end
                    });
                    if !removed {
                        v.push(format!(
                            "{}: STOR by {} and by {} both got 226 with allow_overwrite=false",
                            first.path, first.client, second.client
                        ));
                    }
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn data(b: &[u8]) -> Rc<Vec<u8>> {
        Rc::new(b.to_vec())
    }

    fn op(path: &str, effect: Effect, start: u64, end: u64, status: Status) -> Op {
        Op {
            client: "c".into(),
            path: path.into(),
            effect,
            start: ms(start),
            end: ms(end),
            status,
        }
    }

    fn write(path: &str, b: &[u8], s: u64, e: u64) -> Op {
        op(
            path,
            Effect::Write {
                data: data(b),
                offset: None,
            },
            s,
            e,
            Status::Done,
        )
    }

    fn read(path: &str, b: &[u8], s: u64, e: u64) -> Op {
        op(
            path,
            Effect::Read {
                data: data(b),
                offset: 0,
            },
            s,
            e,
            Status::Done,
        )
    }

    fn fin(entries: &[(&str, Option<&[u8]>)]) -> BTreeMap<String, Content> {
        entries
            .iter()
            .map(|(p, c)| (p.to_string(), c.map(data)))
            .collect()
    }

    #[test]
    fn a_rename_onto_its_own_name_changes_nothing() {
        let h = History::new(
            vec![
                write("/a", b"one", 0, 5),
                op("/a", Effect::RenameTo("/a".into()), 10, 20, Status::Done),
            ],
            BTreeMap::new(),
        );
        let plain = History::new(vec![write("/a", b"one", 0, 5)], BTreeMap::new());
        assert_eq!(
            h.candidates("/a", ms(30), ms(30)),
            plain.candidates("/a", ms(30), ms(30))
        );
        assert!(h
            .candidates("/a", ms(30), ms(30))
            .contains(&Some(data(b"one"))));
    }

    #[test]
    fn a_stale_read_and_a_resurrection_are_caught() {
        let h = History::new(
            vec![
                write("/f", b"new", 10, 20),
                read("/f", b"old", 30, 40),
                op("/g", Effect::Delete, 10, 20, Status::Done),
            ],
            [
                ("/f".to_string(), data(b"old")),
                ("/g".to_string(), data(b"g")),
            ]
            .into_iter()
            .collect(),
        );
        let v = h.check(
            ms(100),
            true,
            &fin(&[("/f", Some(b"new")), ("/g", Some(b"g"))]),
        );
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(v[0].contains("RETR /f"));
        assert!(v[1].contains("/g: at the end"));
    }

    #[test]
    fn overlapping_operations_may_go_either_way() {
        let h = History::new(
            vec![write("/f", b"new", 10, 50), read("/f", b"old", 20, 30)],
            [("/f".to_string(), data(b"old"))].into_iter().collect(),
        );
        assert!(h
            .check(ms(100), true, &fin(&[("/f", Some(b"new"))]))
            .is_empty());
        // A write that may not have happened may be the final content or not.
        let mut w = write("/m", b"x", 10, 20);
        w.status = Status::Maybe;
        let h = History::new(vec![w], BTreeMap::new());
        assert!(h.check(ms(100), true, &fin(&[("/m", None)])).is_empty());
        assert!(h
            .check(ms(100), true, &fin(&[("/m", Some(b"x"))]))
            .is_empty());
    }

    #[test]
    fn renames_carry_content_and_appends_must_survive() {
        let h = History::new(
            vec![
                op("/a", Effect::RenameTo("/b".into()), 10, 20, Status::Done),
                read("/b", b"A", 30, 40),
                op(
                    "/b",
                    Effect::Write {
                        data: data(b"+1"),
                        offset: Some(u64::MAX),
                    },
                    50,
                    60,
                    Status::Done,
                ),
                op(
                    "/b",
                    Effect::Write {
                        data: data(b"+2"),
                        offset: Some(u64::MAX),
                    },
                    55,
                    65,
                    Status::Done,
                ),
            ],
            [("/a".to_string(), data(b"A"))].into_iter().collect(),
        );
        let good = fin(&[("/a", None), ("/b", Some(b"A+1+2"))]);
        assert!(
            h.check(ms(100), true, &good).is_empty(),
            "{:#?}",
            h.check(ms(100), true, &good)
        );
        let lost = fin(&[("/a", None), ("/b", Some(b"A+2"))]);
        let v = h.check(ms(100), true, &lost);
        assert!(v.iter().any(|x| x.contains("APPE /b of 2 bytes")), "{v:#?}");
    }

    #[test]
    fn two_stors_of_one_name_without_overwrite() {
        let h = History::new(
            vec![write("/n", b"1", 10, 30), write("/n", b"2", 15, 35)],
            BTreeMap::new(),
        );
        let v = h.check(ms(100), false, &fin(&[("/n", Some(b"2"))]));
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(h
            .check(ms(100), true, &fin(&[("/n", Some(b"2"))]))
            .is_empty());
    }

    #[test]
    fn a_content_past_the_candidate_bound_is_undecided_not_a_violation() {
        // Eight overlapping appends leave more possible contents than the
        // bound; the overwrite racing them is listed after them, so its
        // content is past the cut. A read of it proves nothing either way.
        let mut ops: Vec<Op> = (0..8u8)
            .map(|k| {
                op(
                    "/f",
                    Effect::Write {
                        data: data(&[b'a' + k]),
                        offset: Some(u64::MAX),
                    },
                    10,
                    100,
                    Status::Done,
                )
            })
            .collect();
        ops.push(write("/f", b"fresh", 10, 100));
        ops.push(read("/f", b"fresh", 200, 210));
        let h = History::new(ops, [("/f".to_string(), data(b"0"))].into_iter().collect());
        let v = h.check(ms(300), true, &fin(&[("/f", Some(b"fresh"))]));
        assert!(v.is_empty(), "{v:?}");
    }
}
