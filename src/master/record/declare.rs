//! The slice of cluster state a recorded session touched: the `file`,
//! `dir` and `user` lines declared where the session first uses a path.

use super::*;

impl Recorder {
    /// Whether a command may name a path to declare (the driver takes the
    /// state lock for [`Self::touch`] only then).
    pub fn names_paths(text: &str) -> bool {
        let (verb, arg) = split_verb(text);
        let verb = if verb == "PRET" {
            split_verb(arg).0
        } else {
            verb
        };
        matches!(
            verb.as_str(),
            "LIST"
                | "NLST"
                | "STAT"
                | "RETR"
                | "STOR"
                | "APPE"
                | "SIZE"
                | "MDTM"
                | "DELE"
                | "RNFR"
                | "RNTO"
                | "MLST"
                | "MLSD"
                | "CWD"
                | "RMD"
                | "MKD"
                | "MFMT"
        )
    }

    /// Declares, as `file` lines, what a command's path argument names as
    /// it is now: the file, or a directory's files (so listings and CWD
    /// find it).
    pub fn touch(&mut self, text: &str, cwd: &VPath, st: &MasterState) {
        let (verb, arg) = split_verb(text);
        let (verb, arg) = if verb == "PRET" {
            split_verb(arg)
        } else {
            (verb, arg)
        };
        let arg = match verb.as_str() {
            "LIST" | "NLST" | "STAT" => arg
                .split_whitespace()
                .skip_while(|w| w.starts_with('-'))
                .collect::<Vec<_>>()
                .join(" "),
            "RETR" | "STOR" | "APPE" | "SIZE" | "MDTM" | "DELE" | "RNFR" | "RNTO" | "MLST"
            | "MLSD" | "CWD" | "RMD" | "MKD" | "MFMT" => arg.to_string(),
            _ => return,
        };
        let arg = if verb == "MFMT" {
            arg.split_once(' ').map_or("", |(_, p)| p).to_string()
        } else {
            arg
        };
        let path = if arg.is_empty() {
            cwd.clone()
        } else {
            match VPath::resolve(cwd, &arg) {
                Ok(p) => p,
                Err(_) => return,
            }
        };
        self.declare(&path, st);
    }

    /// Declares `path` as it is now (a file, a directory with its entries,
    /// or `absent`), and every directory on the way to it.
    fn declare(&mut self, path: &VPath, st: &MasterState) {
        if path.is_root() {
            return;
        }
        if let Ok(f) = st.db.file(path) {
            self.declare_file(path, f, st);
        } else if st.db.dir(path).is_ok() {
            self.declare_dir(path, DIR_FILES, st);
        } else if self.named.insert(path.clone()) && declarable(path) {
            // Not there yet: whatever the session later finds under this
            // name, it made itself, so it is never declared.
            self.write_lines(&[format!("absent {path}")]);
        }
        if let Some(parent) = path.parent() {
            self.declare_ancestors(&parent, st);
        }
    }

    /// `dir` lines for the directories on the way to a path (`absent` for
    /// those that do not exist), nearest first until one already named.
    fn declare_ancestors(&mut self, dir: &VPath, st: &MasterState) {
        let mut d = dir.clone();
        while !d.is_root() && !self.named.contains(&d) {
            self.named.insert(d.clone());
            if declarable(&d) {
                let kind = if st.db.dir(&d).is_ok() {
                    "dir"
                } else {
                    "absent"
                };
                self.write_lines(&[format!("{kind} {d}")]);
            }
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
    }

    /// A directory and up to `limit` of its entries (files, and its
    /// subdirectories as `dir` lines), so listings and CWD find them.
    fn declare_dir(&mut self, dir: &VPath, limit: usize, st: &MasterState) {
        if !self.named.insert(dir.clone()) {
            return;
        }
        let Ok(d) = st.db.dir(dir) else { return };
        if declarable(dir) {
            self.write_lines(&[format!("dir {dir}")]);
        }
        let mut n = 0;
        for (name, node) in &d.children {
            if n >= limit {
                break;
            }
            let Ok(p) = dir.join(name) else { continue };
            match node {
                Node::File(f) => self.declare_file(&p, f, st),
                Node::Dir(_) => {
                    if self.named.insert(p.clone()) && declarable(&p) {
                        self.write_lines(&[format!("dir {p}")]);
                    }
                }
            }
            n += 1;
        }
    }

    fn declare_file(&mut self, path: &VPath, f: &FileMeta, st: &MasterState) {
        if !self.named.insert(path.clone()) {
            return;
        }
        if f.holders.is_empty() {
            return;
        }
        if !declarable(path) {
            self.write_lines(&[format!(
                "# not declarable (blank or '#' in the name): {path:?}"
            )]);
            return;
        }
        let holders: Vec<&str> = f.holders.iter().map(|&h| st.slaves.name(h)).collect();
        let crc = f
            .crc32
            .map(|c| format!("  # crc32={c:08x}"))
            .unwrap_or_default();
        self.write_lines(&[format!(
            "file {} {path} size={}{crc}",
            holders.join(","),
            f.size
        )]);
    }
}
