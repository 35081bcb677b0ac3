//! The sans-IO NAR encoder: structure in, bytes out.
//!
//! The encoder appends the framing of an archive (everything but file contents) to a caller's
//! `Vec<u8>`; the caller writes each file's contents itself between [`Encoder::file`] and
//! [`Encoder::file_end`], so contents are never copied through the encoder. Every rule of the
//! format is enforced in every build, not only in debug builds: entries must come in strictly
//! increasing bytewise order, names and symlink targets must be valid, and calls must follow the
//! grammar of [`crate::wire`]. An archive that breaks a rule is an [`EncodeError`], never bytes
//! that another host would reject or, worse, hash differently.
//!
//! ```
//! use nar_core::encode::Encoder;
//! let mut out = Vec::new();
//! let mut enc = Encoder::new();
//! enc.file(&mut out, false, 6).unwrap();
//! out.extend_from_slice(b"hello\n");
//! enc.file_end(&mut out).unwrap();
//! enc.finish().unwrap();
//! assert_eq!(out, nar_core::testdata::hello_nar());
//! ```

use crate::wire::{self, write_str, MAX_DEPTH, MAX_TARGET_LEN};

/// A call that would make an invalid archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("invalid file name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("directory entries out of order: {name:?} after {previous:?}")]
    Unsorted { previous: String, name: String },
    #[error("duplicate directory entry {name:?}")]
    DuplicateEntry { name: String },
    #[error("invalid symlink target {target:?}: {reason}")]
    InvalidTarget { target: String, reason: &'static str },
    #[error("directories nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("{call} called when {expected} was expected")]
    OutOfOrder { call: &'static str, expected: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing written yet: the magic and the root node come next.
    Start,
    /// A node comes next (after an entry's `node` keyword).
    Node,
    /// Inside a file's contents.
    Contents { size: u64 },
    /// Inside a directory: an entry or the directory's end comes next.
    Directory,
    /// The root node is closed.
    Done,
}

/// The streaming NAR encoder.
#[derive(Debug)]
pub struct Encoder {
    state: State,
    /// Last entry name of each open directory (empty before the first entry).
    directories: Vec<Vec<u8>>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder for a new archive.
    pub fn new() -> Self {
        Encoder { state: State::Start, directories: Vec::new() }
    }

    fn begin_node(&mut self, out: &mut Vec<u8>, call: &'static str) -> Result<(), EncodeError> {
        match self.state {
            State::Start => write_str(out, wire::MAGIC),
            State::Node => {}
            _ => return Err(EncodeError::OutOfOrder { call, expected: self.expected() }),
        }
        write_str(out, wire::OPEN);
        write_str(out, wire::TYPE);
        Ok(())
    }

    fn expected(&self) -> &'static str {
        match self.state {
            State::Start | State::Node => "a node",
            State::Contents { .. } => "file_end",
            State::Directory => "entry or directory_end",
            State::Done => "nothing (the archive is complete)",
        }
    }

    /// Begin a regular file of `size` bytes; write exactly `size` bytes, then call [`Self::file_end`].
    pub fn file(
        &mut self,
        out: &mut Vec<u8>,
        executable: bool,
        size: u64,
    ) -> Result<(), EncodeError> {
        self.begin_node(out, "file")?;
        write_str(out, wire::REGULAR);
        if executable {
            write_str(out, wire::EXECUTABLE);
            write_str(out, b"");
        }
        write_str(out, wire::CONTENTS);
        out.extend_from_slice(&size.to_le_bytes());
        self.state = State::Contents { size };
        Ok(())
    }

    /// End the current file (padding and closing parenthesis).
    pub fn file_end(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let State::Contents { size } = self.state else {
            return Err(EncodeError::OutOfOrder { call: "file_end", expected: self.expected() });
        };
        out.extend_from_slice(&wire::ZEROS[..wire::padding(size)]);
        self.close_node(out);
        Ok(())
    }

    /// A symlink node.
    pub fn symlink(&mut self, out: &mut Vec<u8>, target: &[u8]) -> Result<(), EncodeError> {
        let reason = if target.is_empty() {
            Some("empty")
        } else if target.contains(&0) {
            Some("contains NUL")
        } else if target.len() > MAX_TARGET_LEN {
            Some("longer than 4095 bytes")
        } else {
            None
        };
        if let Some(reason) = reason {
            let target = String::from_utf8_lossy(target).into_owned();
            return Err(EncodeError::InvalidTarget { target, reason });
        }
        self.begin_node(out, "symlink")?;
        write_str(out, wire::SYMLINK);
        write_str(out, wire::TARGET);
        write_str(out, target);
        self.close_node(out);
        Ok(())
    }

    /// Begin a directory node; add entries with [`Self::entry`], end with [`Self::directory_end`].
    pub fn directory(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.directories.len() >= MAX_DEPTH {
            return Err(EncodeError::TooDeep { max: MAX_DEPTH });
        }
        self.begin_node(out, "directory")?;
        write_str(out, wire::DIRECTORY);
        self.directories.push(Vec::new());
        self.state = State::Directory;
        Ok(())
    }

    /// Begin an entry of the current directory; its node comes next.
    pub fn entry(&mut self, out: &mut Vec<u8>, name: &[u8]) -> Result<(), EncodeError> {
        if self.state != State::Directory {
            return Err(EncodeError::OutOfOrder { call: "entry", expected: self.expected() });
        }
        let shown = |n: &[u8]| String::from_utf8_lossy(n).into_owned();
        if let Some(reason) = wire::invalid_name_reason(name) {
            return Err(EncodeError::InvalidName { name: shown(name), reason });
        }
        let previous = self.directories.last_mut().expect("inside a directory");
        if !previous.is_empty() {
            match name.cmp(previous.as_slice()) {
                std::cmp::Ordering::Greater => {}
                std::cmp::Ordering::Equal => {
                    return Err(EncodeError::DuplicateEntry { name: shown(name) })
                }
                std::cmp::Ordering::Less => {
                    return Err(EncodeError::Unsorted {
                        previous: shown(previous),
                        name: shown(name),
                    })
                }
            }
        }
        previous.clear();
        previous.extend_from_slice(name);
        write_str(out, wire::ENTRY);
        write_str(out, wire::OPEN);
        write_str(out, wire::NAME);
        write_str(out, name);
        write_str(out, wire::NODE);
        self.state = State::Node;
        Ok(())
    }

    /// End the current directory.
    pub fn directory_end(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.state != State::Directory {
            return Err(EncodeError::OutOfOrder {
                call: "directory_end",
                expected: self.expected(),
            });
        }
        self.directories.pop();
        self.close_node(out);
        Ok(())
    }

    fn close_node(&mut self, out: &mut Vec<u8>) {
        write_str(out, wire::CLOSE);
        if self.directories.is_empty() {
            self.state = State::Done;
        } else {
            write_str(out, wire::CLOSE);
            self.state = State::Directory;
        }
    }

    /// Check that the archive is complete.
    pub fn finish(&self) -> Result<(), EncodeError> {
        if self.state == State::Done {
            Ok(())
        } else {
            Err(EncodeError::OutOfOrder { call: "finish", expected: self.expected() })
        }
    }
}
