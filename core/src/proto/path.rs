//! Virtual paths: the only form in which a file name travels from the control
//! connection to the namespace and the slaves.
//!
//! RFC 959 §3.2 leaves pathname syntax to the server; this module fixes ours.
//! A [`VPath`] is always absolute and normalised (`/` or `/a/b`, no empty,
//! `.` or `..` components, no trailing slash), so code holding one never has
//! to re-check for directory escapes. Client arguments to `CWD`, `RETR`,
//! `MKD` and friends go through [`VPath::resolve`], which clamps `..` at the
//! root like a chroot; paths reported by slaves go through
//! [`VPath::parse_absolute`], which refuses `..` outright because a slave
//! has no business producing one.
//!
//! One name is reserved: [`RESERVED`] at the top of the tree is where slaves
//! keep uploads in flight. No `VPath` can name it or anything below it, so no
//! command, no slave report and no stored record can reach another session's
//! temporary file: the refusal is in the type, not in each command.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest single component, in bytes (the common `NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Longest whole path, in bytes (the common `PATH_MAX`).
pub const MAX_PATH: usize = 4096;

/// The top-level name slaves keep their temporary upload files under
/// (`<root>/.dftpd-tmp/`). No [`VPath`] starts with it.
pub const RESERVED: &str = ".dftpd-tmp";

/// An absolute, normalised virtual path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VPath(String);

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("file name contains a forbidden character")]
    BadChar,
    #[error("file name too long")]
    NameTooLong,
    #[error("path too long")]
    PathTooLong,
    #[error("empty path")]
    Empty,
    #[error("name reserved by the server")]
    Reserved,
}

/// How `..` is treated while building a path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DotDot {
    /// Pop one component, stopping at the root (client input).
    Clamp,
    /// Refuse the path (slave input).
    Reject,
}

impl VPath {
    /// The root directory `/`.
    pub fn root() -> VPath {
        VPath("/".to_string())
    }

    /// Resolve a client argument against the current directory.
    ///
    /// An argument starting with `/` is absolute, anything else is relative
    /// to `cwd`. `..` never climbs above `/`: the namespace is the client's
    /// whole world, exactly as with a chroot.
    pub fn resolve(cwd: &VPath, arg: &str) -> Result<VPath, PathError> {
        if arg.is_empty() {
            return Err(PathError::Empty);
        }
        let start: Vec<&str> = if arg.starts_with('/') {
            Vec::new()
        } else {
            cwd.components().collect()
        };
        build(start, arg, DotDot::Clamp)
    }

    /// Parse a path that must already be absolute (from a slave or from
    /// stored state). Empty and `.` components are normalised away, but `..`
    /// is refused with [`PathError::BadChar`] and so is a relative path.
    pub fn parse_absolute(s: &str) -> Result<VPath, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if !s.starts_with('/') {
            return Err(PathError::BadChar);
        }
        build(Vec::new(), s, DotDot::Reject)
    }

    /// The path as text, always starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The components from the root down; none for the root itself.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The containing directory; `None` for the root.
    pub fn parent(&self) -> Option<VPath> {
        if self.is_root() {
            return None;
        }
        match self.0.rfind('/') {
            Some(0) | None => Some(VPath::root()),
            Some(i) => self.0.get(..i).map(|p| VPath(p.to_string())),
        }
    }

    /// The last component; `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        if self.is_root() {
            return None;
        }
        self.0.rsplit('/').next()
    }

    /// Append one component. `name` must be a single valid component: not
    /// empty, not `.` or `..`, without `/`.
    pub fn join(&self, name: &str) -> Result<VPath, PathError> {
        if name.is_empty() {
            return Err(PathError::Empty);
        }
        if name == "." || name == ".." || name.contains('/') {
            return Err(PathError::BadChar);
        }
        check_component(name)?;
        if self.is_root() && name == RESERVED {
            return Err(PathError::Reserved);
        }
        let mut s = String::with_capacity(self.0.len() + 1 + name.len());
        if !self.is_root() {
            s.push_str(&self.0);
        }
        s.push('/');
        s.push_str(name);
        if s.len() > MAX_PATH {
            return Err(PathError::PathTooLong);
        }
        Ok(VPath(s))
    }

    /// Component-wise prefix test: `/ab` does not start with `/a`, and every
    /// path starts with `/`.
    pub fn starts_with(&self, prefix: &VPath) -> bool {
        if prefix.is_root() {
            return true;
        }
        match self.0.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    /// The components left after removing `prefix`, or `None` if `prefix` is
    /// not a component-wise prefix. Empty when the paths are equal.
    pub fn strip_prefix(&self, prefix: &VPath) -> Option<Vec<&str>> {
        if !self.starts_with(prefix) {
            return None;
        }
        let skip = prefix.components().count();
        Some(self.components().skip(skip).collect())
    }

    /// The path without its leading `/` (`""` for the root), ready to join
    /// onto a storage root directory.
    pub fn relative(&self) -> &str {
        self.0.strip_prefix('/').unwrap_or(&self.0)
    }
}

/// Apply the components of `arg` to `stack` and build the result.
fn build<'a>(mut stack: Vec<&'a str>, arg: &'a str, dotdot: DotDot) -> Result<VPath, PathError> {
    // Check the whole argument first so a forbidden byte is reported even
    // inside a component that a later `..` would have removed.
    if arg.bytes().any(forbidden_byte) {
        return Err(PathError::BadChar);
    }
    for comp in arg.split('/') {
        match comp {
            "" | "." => {}
            ".." => match dotdot {
                DotDot::Clamp => {
                    stack.pop();
                }
                DotDot::Reject => return Err(PathError::BadChar),
            },
            name => {
                check_component(name)?;
                stack.push(name);
            }
        }
    }
    if stack.first() == Some(&RESERVED) {
        return Err(PathError::Reserved);
    }
    let mut s = String::new();
    for comp in &stack {
        s.push('/');
        s.push_str(comp);
        // Checked while building so an absurd stack is not concatenated whole.
        if s.len() > MAX_PATH {
            return Err(PathError::PathTooLong);
        }
    }
    if s.is_empty() {
        s.push('/');
    }
    Ok(VPath(s))
}

fn check_component(name: &str) -> Result<(), PathError> {
    if name.bytes().any(forbidden_byte) {
        return Err(PathError::BadChar);
    }
    if name.len() > MAX_NAME {
        return Err(PathError::NameTooLong);
    }
    Ok(())
}

/// Control characters would corrupt listings and replies; a backslash would
/// be a path separator on some slave file systems.
fn forbidden_byte(b: u8) -> bool {
    b < 0x20 || b == 0x7f || b == b'\\'
}

impl fmt::Display for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for VPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for VPath {
    /// Validated on the way in: a peer cannot smuggle a non-normalised or
    /// escaping path past the type.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        VPath::parse_absolute(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).expect("valid test path")
    }

    fn res(cwd: &str, arg: &str) -> Result<String, PathError> {
        VPath::resolve(&p(cwd), arg).map(|v| v.as_str().to_string())
    }

    #[test]
    fn root_basics() {
        let r = VPath::root();
        assert_eq!(r.as_str(), "/");
        assert!(r.is_root());
        assert_eq!(r.components().count(), 0);
        assert_eq!(r.parent(), None);
        assert_eq!(r.file_name(), None);
        assert_eq!(r.relative(), "");
        assert_eq!(r.to_string(), "/");
    }

    #[test]
    fn resolve_absolute_and_relative() {
        assert_eq!(res("/", "/a/b"), Ok("/a/b".into()));
        assert_eq!(res("/x", "/a/b"), Ok("/a/b".into()));
        assert_eq!(res("/x", "a/b"), Ok("/x/a/b".into()));
        assert_eq!(res("/x/y", "."), Ok("/x/y".into()));
        assert_eq!(res("/x/y", ".."), Ok("/x".into()));
        assert_eq!(res("/x/y", "/"), Ok("/".into()));
        assert_eq!(res("/x/y", "//"), Ok("/".into()));
        assert_eq!(res("/", "a/./b//c/"), Ok("/a/b/c".into()));
        assert_eq!(
            res("/", "name with spaces "),
            Ok("/name with spaces ".into())
        );
        assert_eq!(res("/", " lead"), Ok("/ lead".into()));
        assert_eq!(res("/", "ünïcödé/日本"), Ok("/ünïcödé/日本".into()));
        assert_eq!(res("/", "...").map(|_| ()), Ok(()));
    }

    #[test]
    fn dotdot_never_escapes_root() {
        assert_eq!(res("/", "../../etc/passwd"), Ok("/etc/passwd".into()));
        assert_eq!(res("/a", "../../etc/passwd"), Ok("/etc/passwd".into()));
        assert_eq!(res("/a/b", "/../.."), Ok("/".into()));
        assert_eq!(res("/", "a/../../b"), Ok("/b".into()));
        assert_eq!(res("/x", "a/../../../b/.."), Ok("/".into()));
        assert_eq!(res("/", ".."), Ok("/".into()));
        assert_eq!(res("/a/b/c", "../../.."), Ok("/".into()));
        assert_eq!(res("/a/b/c", "../d"), Ok("/a/b/d".into()));
    }

    #[test]
    fn forbidden_characters() {
        for bad in [
            "a\\b",
            "..\\..\\etc",
            "a\0b",
            "\0",
            "a\nb",
            "a\rb",
            "tab\there",
            "del\x7f",
            "\x1b[31m",
        ] {
            assert_eq!(res("/", bad), Err(PathError::BadChar), "{bad:?}");
        }
        // Even in a component that a later ".." removes.
        assert_eq!(res("/", "a\\b/.."), Err(PathError::BadChar));
    }

    #[test]
    fn empty_argument() {
        assert_eq!(res("/", ""), Err(PathError::Empty));
        assert_eq!(VPath::parse_absolute(""), Err(PathError::Empty));
    }

    #[test]
    fn length_limits() {
        let ok = "a".repeat(MAX_NAME);
        let long = "a".repeat(MAX_NAME + 1);
        assert!(res("/", &ok).is_ok());
        assert_eq!(res("/", &long), Err(PathError::NameTooLong));
        assert_eq!(
            res("/", &format!("x/{long}/y")),
            Err(PathError::NameTooLong)
        );
        // Multi-byte characters count in bytes.
        assert_eq!(res("/", &"é".repeat(128)), Err(PathError::NameTooLong));

        // 16 components of 255 bytes + 16 slashes = 4096 bytes exactly.
        let comp = "b".repeat(MAX_NAME);
        let exact = vec![comp.as_str(); 16].join("/");
        assert_eq!(res("/", &exact).map(|s| s.len()), Ok(MAX_PATH));
        let over = format!("{exact}/c");
        assert_eq!(res("/", &over), Err(PathError::PathTooLong));
        let cwd = VPath::resolve(&VPath::root(), &exact).expect("fits");
        assert_eq!(VPath::resolve(&cwd, "c"), Err(PathError::PathTooLong));
        assert_eq!(cwd.join("c"), Err(PathError::PathTooLong));
        assert_eq!(
            VPath::resolve(&cwd, "..").map(|v| v.components().count()),
            Ok(15)
        );
    }

    #[test]
    fn parse_absolute_rules() {
        assert_eq!(p("/").as_str(), "/");
        assert_eq!(p("/a//b/./c/").as_str(), "/a/b/c");
        assert_eq!(VPath::parse_absolute("a/b"), Err(PathError::BadChar));
        assert_eq!(VPath::parse_absolute("/a/../b"), Err(PathError::BadChar));
        assert_eq!(VPath::parse_absolute("/.."), Err(PathError::BadChar));
        assert_eq!(VPath::parse_absolute("/a\\b"), Err(PathError::BadChar));
        assert_eq!(VPath::parse_absolute("/a\0"), Err(PathError::BadChar));
        assert_eq!(
            VPath::parse_absolute(&format!("/{}", "z".repeat(256))),
            Err(PathError::NameTooLong)
        );
    }

    #[test]
    fn join_rules() {
        let d = p("/dir");
        assert_eq!(d.join("f").map(|v| v.0), Ok("/dir/f".into()));
        assert_eq!(VPath::root().join("f").map(|v| v.0), Ok("/f".into()));
        assert_eq!(d.join(""), Err(PathError::Empty));
        assert_eq!(d.join("."), Err(PathError::BadChar));
        assert_eq!(d.join(".."), Err(PathError::BadChar));
        assert_eq!(d.join("a/b"), Err(PathError::BadChar));
        assert_eq!(d.join("a\\b"), Err(PathError::BadChar));
        assert_eq!(d.join("a\nb"), Err(PathError::BadChar));
        assert_eq!(d.join(&"n".repeat(256)), Err(PathError::NameTooLong));
        assert_eq!(d.join(" spaced ").map(|v| v.0), Ok("/dir/ spaced ".into()));
    }

    #[test]
    fn the_reserved_name_cannot_be_built() {
        for arg in [
            "/.dftpd-tmp",
            ".dftpd-tmp",
            "//.dftpd-tmp/",
            "/./.dftpd-tmp/5",
            "/x/../.dftpd-tmp/5",
            "../../.dftpd-tmp",
        ] {
            assert_eq!(res("/", arg), Err(PathError::Reserved), "{arg}");
        }
        assert_eq!(res("/", "/.dftpd-tmp/.."), Ok("/".into()));
        assert_eq!(
            VPath::parse_absolute("/.dftpd-tmp/1"),
            Err(PathError::Reserved)
        );
        assert_eq!(VPath::root().join(RESERVED), Err(PathError::Reserved));
        // Only at the top: elsewhere it is an ordinary name.
        assert!(p("/a").join(RESERVED).is_ok());
        assert!(res("/", "/a/.dftpd-tmp").is_ok());
        assert!(res("/", "/.dftpd-tmpx").is_ok());
        let bytes = postcard::to_allocvec(&"/.dftpd-tmp/3".to_string()).unwrap();
        assert!(postcard::from_bytes::<VPath>(&bytes).is_err());
    }

    #[test]
    fn parent_and_file_name() {
        let v = p("/a/b/c");
        assert_eq!(v.file_name(), Some("c"));
        assert_eq!(v.parent(), Some(p("/a/b")));
        assert_eq!(p("/a").parent(), Some(VPath::root()));
        assert_eq!(p("/a").file_name(), Some("a"));
        assert_eq!(v.components().collect::<Vec<_>>(), vec!["a", "b", "c"]);
        assert_eq!(v.relative(), "a/b/c");
    }

    #[test]
    fn prefixes_are_component_wise() {
        let a = p("/a");
        assert!(p("/a").starts_with(&a));
        assert!(p("/a/b").starts_with(&a));
        assert!(!p("/ab").starts_with(&a));
        assert!(!p("/").starts_with(&a));
        assert!(p("/anything").starts_with(&VPath::root()));
        assert!(VPath::root().starts_with(&VPath::root()));
        assert_eq!(p("/a/b/c").strip_prefix(&a), Some(vec!["b", "c"]));
        assert_eq!(p("/a").strip_prefix(&a), Some(vec![]));
        assert_eq!(p("/ab/c").strip_prefix(&a), None);
        assert_eq!(p("/x/y").strip_prefix(&VPath::root()), Some(vec!["x", "y"]));
    }

    #[test]
    fn ordering_and_display() {
        assert!(p("/a") < p("/b"));
        assert_eq!(format!("{}", p("/x/y")), "/x/y");
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let v = p("/a/b c");
        let bytes = postcard::to_allocvec(&v).expect("serialize");
        let back: VPath = postcard::from_bytes(&bytes).expect("deserialize");
        assert_eq!(back, v);
        // A string that is not a valid absolute path must not deserialize.
        for bad in ["/a/../b", "rel", "", "/a\\b"] {
            let bytes = postcard::to_allocvec(&bad.to_string()).expect("serialize");
            assert!(postcard::from_bytes::<VPath>(&bytes).is_err(), "{bad:?}");
        }
        // Non-normalised but safe input is normalised.
        let bytes = postcard::to_allocvec(&"/a//b/".to_string()).expect("serialize");
        let v: VPath = postcard::from_bytes(&bytes).expect("deserialize");
        assert_eq!(v.as_str(), "/a/b");
    }
}
