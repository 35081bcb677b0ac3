//! The sans-IO NAR decoder: bytes in, events out, nothing read or written by itself.
//!
//! [`Decoder::step`] takes any slice of the input (one byte or a megabyte) and returns how
//! much of it was consumed and, possibly, one [`Event`]. Keywords, names and symlink targets
//! split across slices are gathered in a small internal buffer (bounded by the limits of
//! [`crate::wire`]); file contents are never copied: [`Event::Data`] says that the last `len`
//! bytes consumed are contents. Every rule of the format is checked as the bytes arrive, and an
//! error carries the byte offset where it was found.
//!
//! The decoder stops at the end of the archive: it consumes nothing after [`Event::End`], so a
//! NAR embedded in a larger stream (an export bundle) can be read without reading past it. A
//! caller reading a standalone NAR checks that nothing follows (see [`crate::read`]).
//!
//! ```
//! use nar_core::decode::{Decoder, Event};
//! let nar = nar_core::testdata::hello_nar();
//! let mut decoder = Decoder::new();
//! let mut input = &nar[..];
//! let mut events = Vec::new();
//! while !decoder.is_done() {
//!     let step = decoder.step(input).unwrap();
//!     if let Some(event) = step.event { events.push(event) }
//!     input = &input[step.consumed..];
//! }
//! assert_eq!(events, [Event::File { executable: false, size: 6 }, Event::Data { len: 6 }, Event::FileEnd, Event::End]);
//! ```

use crate::error::{DecodeError, DecodeErrorKind};
use crate::wire::{self, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN, MAX_TOKEN_LEN};

/// What the decoder found. Names and symlink targets are read with [`Decoder::name`] and
/// [`Decoder::symlink_target`] right after the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A directory node begins; its entries follow, then [`Event::DirectoryEnd`].
    Directory,
    /// A directory entry with the name [`Decoder::name`]; its node follows.
    Entry,
    /// The current directory has no more entries.
    DirectoryEnd,
    /// A regular file begins; `size` bytes of contents follow as [`Event::Data`].
    File { executable: bool, size: u64 },
    /// The last `len` bytes consumed by this step are file contents.
    Data { len: usize },
    /// All contents of the current file were delivered.
    FileEnd,
    /// A symlink whose target is [`Decoder::symlink_target`].
    Symlink,
    /// The archive is complete.
    End,
}

/// Result of one [`Decoder::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input consumed.
    pub consumed: usize,
    /// The event completed by these bytes, if any.
    pub event: Option<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Magic,
    NodeOpen,
    TypeKeyword,
    TypeValue,
    RegularField,
    ExecutableValue,
    ContentsKeyword,
    Size,
    Contents,
    ContentsPadding,
    NodeClose,
    TargetKeyword,
    Target,
    DirectoryField,
    EntryOpen,
    NameKeyword,
    Name,
    NodeKeyword,
    EntryClose,
    Done { end_reported: bool },
}

/// The streaming NAR decoder.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Previous entry name of each open directory (empty before the first entry).
    directories: Vec<Vec<u8>>,
    /// Bytes consumed since the start of the archive.
    offset: u64,
    /// Offset where the token being gathered starts.
    token_start: u64,
    /// The token being gathered: 8 length bytes, then the value and its padding.
    token: Vec<u8>,
    /// The last name or symlink target read.
    value: Vec<u8>,
    /// Contents bytes still to come.
    remaining: u64,
    /// Padding bytes still to come after contents.
    padding_left: usize,
    /// Size of the current file.
    file_size: u64,
    /// Whether the current file is executable.
    executable: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

/// What a string token is for: bounds its length and names it in errors.
#[derive(Clone, Copy)]
enum Field {
    Keyword,
    Name,
    Target,
}

impl Decoder {
    /// A decoder expecting the start of an archive.
    pub fn new() -> Self {
        Decoder {
            state: State::Magic,
            directories: Vec::new(),
            offset: 0,
            token_start: 0,
            token: Vec::with_capacity(64),
            value: Vec::new(),
            remaining: 0,
            padding_left: 0,
            file_size: 0,
            executable: false,
        }
    }

    /// True once [`Event::End`] was returned.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done { end_reported: true })
    }

    /// Bytes consumed so far: the offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Directory nesting of the current node (0 = the root node).
    pub fn depth(&self) -> usize {
        self.directories.len()
    }

    /// The entry name of the last [`Event::Entry`].
    pub fn name(&self) -> &[u8] {
        &self.value
    }

    /// The target of the last [`Event::Symlink`].
    pub fn symlink_target(&self) -> &[u8] {
        &self.value
    }

    /// The error for an input that ended here.
    pub fn truncated(&self) -> DecodeError {
        DecodeError {
            offset: self.offset,
            kind: DecodeErrorKind::Truncated { expected: self.expected() },
        }
    }

    /// Check that the archive is complete (call at the end of the input).
    pub fn finish(&self) -> Result<(), DecodeError> {
        if matches!(self.state, State::Done { .. }) {
            Ok(())
        } else {
            Err(self.truncated())
        }
    }

    fn expected(&self) -> &'static str {
        match self.state {
            State::Magic => "the magic `nix-archive-1`",
            State::NodeOpen | State::EntryOpen => "`(`",
            State::TypeKeyword => "`type`",
            State::TypeValue => "a node type",
            State::RegularField => "`executable` or `contents`",
            State::ExecutableValue => "the empty executable marker value",
            State::ContentsKeyword => "`contents`",
            State::Size => "the file size",
            State::Contents => "file contents",
            State::ContentsPadding => "padding after file contents",
            State::NodeClose | State::EntryClose => "`)`",
            State::TargetKeyword => "`target`",
            State::Target => "a symlink target",
            State::DirectoryField => "`entry` or `)`",
            State::NameKeyword => "`name`",
            State::Name => "an entry name",
            State::NodeKeyword => "`node`",
            State::Done { .. } => "nothing",
        }
    }

    fn error(&self, offset: u64, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { offset, kind }
    }

    /// Consume a prefix of `input` and report at most one event.
    ///
    /// Returns `consumed == 0` with no event only when `input` is empty or the archive is
    /// done; otherwise it makes progress. After [`Event::End`] nothing more is consumed.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, DecodeError> {
        let mut pos = 0;
        loop {
            if let State::Done { end_reported } = self.state {
                if end_reported {
                    return Ok(Step { consumed: pos, event: None });
                }
                self.state = State::Done { end_reported: true };
                return Ok(Step { consumed: pos, event: Some(Event::End) });
            }
            match self.state {
                State::Contents => {
                    if self.remaining == 0 {
                        self.padding_left = wire::padding(self.file_size);
                        self.state = State::ContentsPadding;
                        return Ok(Step { consumed: pos, event: Some(Event::FileEnd) });
                    }
                    let available = input.len() - pos;
                    if available == 0 {
                        return Ok(Step { consumed: pos, event: None });
                    }
                    let len = available.min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    pos += len;
                    self.offset += len as u64;
                    self.remaining -= len as u64;
                    return Ok(Step { consumed: pos, event: Some(Event::Data { len }) });
                }
                State::ContentsPadding => {
                    while self.padding_left > 0 {
                        let Some(&byte) = input.get(pos) else {
                            return Ok(Step { consumed: pos, event: None });
                        };
                        if byte != 0 {
                            return Err(self.error(self.offset, DecodeErrorKind::NonZeroPadding));
                        }
                        pos += 1;
                        self.offset += 1;
                        self.padding_left -= 1;
                    }
                    self.state = State::NodeClose;
                }
                State::Size => {
                    if !self.gather_fixed(input, &mut pos) {
                        return Ok(Step { consumed: pos, event: None });
                    }
                    let size = u64::from_le_bytes(self.token[..8].try_into().expect("8 bytes"));
                    self.token.clear();
                    self.remaining = size;
                    self.file_size = size;
                    self.state = State::Contents;
                    let executable = self.executable;
                    return Ok(Step {
                        consumed: pos,
                        event: Some(Event::File { executable, size }),
                    });
                }
                _ => {
                    let field = match self.state {
                        State::Name => Field::Name,
                        State::Target => Field::Target,
                        _ => Field::Keyword,
                    };
                    if !self.gather_str(input, &mut pos, field)? {
                        return Ok(Step { consumed: pos, event: None });
                    }
                    if let Some(event) = self.on_token()? {
                        return Ok(Step { consumed: pos, event: Some(event) });
                    }
                }
            }
        }
    }
}

impl Decoder {
    /// Gather the 8 bytes of a raw `u64`; true when complete (in `self.token[..8]`).
    fn gather_fixed(&mut self, input: &[u8], pos: &mut usize) -> bool {
        if self.token.is_empty() {
            self.token_start = self.offset;
        }
        let take = (8 - self.token.len()).min(input.len() - *pos);
        self.token.extend_from_slice(&input[*pos..*pos + take]);
        *pos += take;
        self.offset += take as u64;
        self.token.len() == 8
    }

    /// Gather a whole `str` token; true when complete (value at `self.token[8..8 + len]`).
    fn gather_str(
        &mut self,
        input: &[u8],
        pos: &mut usize,
        field: Field,
    ) -> Result<bool, DecodeError> {
        if self.token.len() < 8 && !self.gather_fixed(input, pos) {
            return Ok(false);
        }
        let len = self.token_len();
        if self.token.len() == 8 {
            if len >> 32 != 0 {
                return Err(self.error(self.token_start, DecodeErrorKind::IntegerTooLarge(len)));
            }
            let too_long = match field {
                Field::Keyword if len > MAX_TOKEN_LEN as u64 => {
                    Some(DecodeErrorKind::UnexpectedToken {
                        expected: self.expected(),
                        found: format!("a {len}-byte string"),
                    })
                }
                Field::Name if len > MAX_NAME_LEN as u64 => {
                    Some(DecodeErrorKind::NameTooLong { len })
                }
                Field::Target if len > MAX_TARGET_LEN as u64 => {
                    Some(DecodeErrorKind::TargetTooLong { len })
                }
                _ => None,
            };
            if let Some(kind) = too_long {
                return Err(self.error(self.token_start, kind));
            }
        }
        let total = 8 + len as usize + wire::padding(len);
        let take = (total - self.token.len()).min(input.len() - *pos);
        self.token.extend_from_slice(&input[*pos..*pos + take]);
        *pos += take;
        self.offset += take as u64;
        if self.token.len() < total {
            return Ok(false);
        }
        let value_end = 8 + len as usize;
        if let Some(i) = self.token[value_end..].iter().position(|&b| b != 0) {
            let at = self.token_start + (value_end + i) as u64;
            return Err(self.error(at, DecodeErrorKind::NonZeroPadding));
        }
        Ok(true)
    }

    fn token_len(&self) -> u64 {
        u64::from_le_bytes(self.token[..8].try_into().expect("8 bytes"))
    }

    /// Act on a complete `str` token in `self.token`.
    fn on_token(&mut self) -> Result<Option<Event>, DecodeError> {
        let len = self.token_len() as usize;
        let token = std::mem::take(&mut self.token);
        let result = self.on_value(&token[8..8 + len]);
        self.token = token;
        self.token.clear();
        result
    }

    fn on_value(&mut self, value: &[u8]) -> Result<Option<Event>, DecodeError> {
        let at = self.token_start;
        let unexpected = |this: &Self| {
            this.error(
                at,
                DecodeErrorKind::UnexpectedToken { expected: this.expected(), found: shown(value) },
            )
        };
        let mut event = None;
        self.state = match (self.state, value) {
            (State::Magic, wire::MAGIC) => State::NodeOpen,
            (State::Magic, _) => {
                return Err(self.error(at, DecodeErrorKind::BadMagic { found: shown(value) }))
            }
            (State::NodeOpen | State::EntryOpen, wire::OPEN) => {
                if self.state == State::NodeOpen {
                    State::TypeKeyword
                } else {
                    State::NameKeyword
                }
            }
            (State::TypeKeyword, wire::TYPE) => State::TypeValue,
            (State::TypeValue, wire::REGULAR) => {
                self.executable = false;
                State::RegularField
            }
            (State::TypeValue, wire::SYMLINK) => State::TargetKeyword,
            (State::TypeValue, wire::DIRECTORY) => {
                if self.directories.len() >= MAX_DEPTH {
                    return Err(self.error(at, DecodeErrorKind::TooDeep { max: MAX_DEPTH }));
                }
                self.directories.push(Vec::new());
                event = Some(Event::Directory);
                State::DirectoryField
            }
            (State::RegularField, wire::EXECUTABLE) => State::ExecutableValue,
            (State::RegularField | State::ContentsKeyword, wire::CONTENTS) => State::Size,
            (State::ExecutableValue, b"") => {
                self.executable = true;
                State::ContentsKeyword
            }
            (State::NodeClose, wire::CLOSE) => self.node_closed(),
            (State::TargetKeyword, wire::TARGET) => State::Target,
            (State::Target, target) => {
                let reason = if target.is_empty() {
                    Some("empty symlink target")
                } else if target.contains(&0) {
                    Some("symlink target contains NUL")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(self.error(at, DecodeErrorKind::InvalidTarget { reason }));
                }
                self.value.clear();
                self.value.extend_from_slice(target);
                event = Some(Event::Symlink);
                State::NodeClose
            }
            (State::DirectoryField, wire::ENTRY) => State::EntryOpen,
            (State::DirectoryField, wire::CLOSE) => {
                self.directories.pop();
                event = Some(Event::DirectoryEnd);
                self.node_closed()
            }
            (State::NameKeyword, wire::NAME) => State::Name,
            (State::Name, name) => {
                if let Some(reason) = wire::invalid_name_reason(name) {
                    return Err(
                        self.error(at, DecodeErrorKind::InvalidName { name: shown(name), reason })
                    );
                }
                let previous = self.directories.last_mut().expect("inside a directory");
                if !previous.is_empty() {
                    match name.cmp(previous.as_slice()) {
                        std::cmp::Ordering::Greater => {}
                        std::cmp::Ordering::Equal => {
                            return Err(self
                                .error(at, DecodeErrorKind::DuplicateEntry { name: shown(name) }))
                        }
                        std::cmp::Ordering::Less => {
                            let previous = shown(previous);
                            return Err(self.error(
                                at,
                                DecodeErrorKind::Unsorted { previous, name: shown(name) },
                            ));
                        }
                    }
                }
                previous.clear();
                previous.extend_from_slice(name);
                self.value.clear();
                self.value.extend_from_slice(name);
                event = Some(Event::Entry);
                State::NodeKeyword
            }
            (State::NodeKeyword, wire::NODE) => State::NodeOpen,
            (State::EntryClose, wire::CLOSE) => State::DirectoryField,
            _ => return Err(unexpected(self)),
        };
        Ok(event)
    }

    /// The state after a node's closing `)`.
    fn node_closed(&self) -> State {
        if self.directories.is_empty() {
            State::Done { end_reported: false }
        } else {
            State::EntryClose
        }
    }
}

/// A byte string as shown in errors: lossy UTF-8, cut at 80 characters.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() > 80 {
        format!("{}...", text.chars().take(80).collect::<String>())
    } else {
        text.into_owned()
    }
}
