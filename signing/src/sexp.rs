//! libgcrypt S-expressions: the text Guix keeps its keys, ACL and signatures in.
//!
//! # Formats read ([`Sexp::parse`])
//! Everything `gcry_sexp_new(…, autodetect=1)` accepts (guix-spec §3.1):
//! - lists `( … )`, whitespace (space, `\t`, `\n`, `\v`, `\f`, `\r`) between items;
//! - **canonical** atoms `<decimal-len>:<len raw bytes>` (Rivest canonical form, as in
//!   `(3:foo)`);
//! - **tokens** `[A-Za-z0-9-./_:*+=]+` that do not start with a digit, continued through NUL
//!   bytes as libgcrypt does (it writes such tokens, see below);
//! - **quoted strings** `"…"` with the C escapes `\b \t \v \n \f \r \" \' \\`, `\xNN`,
//!   three-digit octal `\NNN`, and backslash-newline line continuation;
//! - **hex** `#…#` (whitespace allowed inside, even number of digits);
//! - **base64** `|…|`;
//! - an optional decimal length before `"…"`, `#…#` or `|…|` (it must match the decoded length);
//! - **display hints** `[…]` before an atom: accepted and dropped (Guix never writes them).
//!
//! Only one expression is read; trailing whitespace (and NUL bytes, as a C string may carry) is
//! allowed, anything else after it is an error. Nesting is limited to [`MAX_DEPTH`] so that a
//! hostile input cannot exhaust the stack. The parser is total: every input gives `Ok` or `Err`.
//!
//! # Formats written
//! - [`Sexp::to_canonical`]: canonical form, no whitespace.
//! - [`Sexp::to_advanced`]: libgcrypt's `GCRYSEXP_FMT_ADVANCED` layout, the form Guix writes
//!   to disk (`_gcry_sexp_sprint`, reproduced in guix-spec §3.1):
//!   an opening paren at depth `d > 0` is preceded by `\n` and `d` spaces; after a closing paren,
//!   if the next item is an atom or `)`, `\n` and (depth after closing) spaces; after an atom, one
//!   space unless `)` follows; the text ends with one `\n`. Atoms print as `""` when empty, as
//!   `#UPPERCASEHEX#` when binary, as bare tokens when possible, otherwise quoted. "Binary" is
//!   libgcrypt's test: a first byte that is 0 or ≥ 0x80, or any byte in `0x01..0x20` or
//!   `0x7f..=0xa0` other than the C-escaped ones. A zero byte after the first is *not* binary
//!   (libgcrypt's `strchr` quirk): it prints as `\x00` in a quoted string, or raw inside a token.
//!
//! # Structure
//! [`Sexp`] is atoms (byte strings) and lists. Equality is structural over atom bytes, which is
//! what guile-gcrypt's `canonical-sexp->sexp` comparison amounts to (§3.5): layout never matters.

use std::fmt;

use base64::Engine;

/// Deepest nesting [`Sexp::parse`] accepts.
pub const MAX_DEPTH: usize = 64;

/// An S-expression: an atom (a byte string) or a list.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Sexp {
    /// A byte string.
    Atom(Vec<u8>),
    /// A list of S-expressions.
    List(Vec<Sexp>),
}

/// Why text is not an S-expression; `offset` is the byte offset where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid S-expression at byte {offset}: {reason}")]
pub struct SexpError {
    /// Byte offset in the input.
    pub offset: usize,
    /// What was wrong.
    pub reason: &'static str,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-./_:*+=".contains(&b)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, reason: &'static str) -> SexpError {
        SexpError { offset: self.pos, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
    }

    /// Parse one atom starting at the current byte (which is not `(`, `)` or whitespace).
    fn atom(&mut self) -> Result<Vec<u8>, SexpError> {
        let b = self.peek().ok_or_else(|| self.err("unexpected end of input"))?;
        if b.is_ascii_digit() {
            let start = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            let digits = &self.input[start..self.pos];
            let len: usize = std::str::from_utf8(digits)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(SexpError { offset: start, reason: "length prefix too large" })?;
            return match self.peek() {
                Some(b':') => {
                    self.pos += 1;
                    let end = self
                        .pos
                        .checked_add(len)
                        .filter(|&e| e <= self.input.len())
                        .ok_or_else(|| self.err("canonical atom runs past the end of input"))?;
                    let v = self.input[self.pos..end].to_vec();
                    self.pos = end;
                    Ok(v)
                }
                Some(b'"' | b'#' | b'|') => {
                    let v = self.delimited_atom()?;
                    if v.len() != len {
                        return Err(SexpError {
                            offset: start,
                            reason: "length prefix does not match the atom",
                        });
                    }
                    Ok(v)
                }
                _ => Err(self.err("a length prefix must be followed by `:`, `\"`, `#` or `|`")),
            };
        }
        if is_token_char(b) {
            let start = self.pos;
            // libgcrypt continues a token through NUL bytes (and writes such tokens, see
            // `atom_style`), so read them back.
            while self.peek().is_some_and(|c| c == 0 || is_token_char(c)) {
                self.pos += 1;
            }
            return Ok(self.input[start..self.pos].to_vec());
        }
        self.delimited_atom()
    }

    fn delimited_atom(&mut self) -> Result<Vec<u8>, SexpError> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'#') => self.hex(),
            Some(b'|') => self.base64(),
            None => Err(self.err("unexpected end of input")),
            _ => Err(self.err("unexpected character")),
        }
    }

    fn quoted(&mut self) -> Result<Vec<u8>, SexpError> {
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let b = self.peek().ok_or_else(|| self.err("unterminated quoted string"))?;
            self.pos += 1;
            match b {
                b'"' => return Ok(out),
                b'\\' => {
                    let e = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
                    self.pos += 1;
                    match e {
                        b'b' => out.push(0x08),
                        b't' => out.push(b'\t'),
                        b'v' => out.push(0x0b),
                        b'n' => out.push(b'\n'),
                        b'f' => out.push(0x0c),
                        b'r' => out.push(b'\r'),
                        b'"' | b'\'' | b'\\' => out.push(e),
                        b'x' => {
                            let hi = self.peek().and_then(hex_val);
                            let lo = self.input.get(self.pos + 1).copied().and_then(hex_val);
                            match (hi, lo) {
                                (Some(h), Some(l)) => {
                                    out.push(h << 4 | l);
                                    self.pos += 2;
                                }
                                _ => return Err(self.err("bad \\x escape")),
                            }
                        }
                        b'0'..=b'7' => {
                            let d2 = self.peek().filter(|c| (b'0'..=b'7').contains(c));
                            let d3 = self
                                .input
                                .get(self.pos + 1)
                                .copied()
                                .filter(|c| (b'0'..=b'7').contains(c));
                            match (d2, d3) {
                                (Some(d2), Some(d3)) => {
                                    let v = u32::from(e - b'0') * 64
                                        + u32::from(d2 - b'0') * 8
                                        + u32::from(d3 - b'0');
                                    let v = u8::try_from(v)
                                        .map_err(|_| self.err("octal escape out of range"))?;
                                    out.push(v);
                                    self.pos += 2;
                                }
                                _ => return Err(self.err("bad octal escape")),
                            }
                        }
                        b'\n' | b'\r' => {
                            // Line continuation: also swallow the other half of \r\n or \n\r.
                            if let Some(n) = self.peek() {
                                if (n == b'\n' || n == b'\r') && n != e {
                                    self.pos += 1;
                                }
                            }
                        }
                        _ => return Err(self.err("unknown escape in quoted string")),
                    }
                }
                _ => out.push(b),
            }
        }
    }

    fn hex(&mut self) -> Result<Vec<u8>, SexpError> {
        self.pos += 1;
        let mut out = Vec::new();
        let mut half: Option<u8> = None;
        loop {
            let b = self.peek().ok_or_else(|| self.err("unterminated hex string"))?;
            self.pos += 1;
            if b == b'#' {
                if half.is_some() {
                    return Err(self.err("odd number of hex digits"));
                }
                return Ok(out);
            }
            if is_ws(b) {
                continue;
            }
            let v = hex_val(b).ok_or_else(|| self.err("invalid hex digit"))?;
            match half.take() {
                Some(h) => out.push(h << 4 | v),
                None => half = Some(v),
            }
        }
    }

    fn base64(&mut self) -> Result<Vec<u8>, SexpError> {
        self.pos += 1;
        let start = self.pos;
        let end = self.input[start..]
            .iter()
            .position(|&b| b == b'|')
            .map(|i| start + i)
            .ok_or_else(|| self.err("unterminated base64 string"))?;
        let text: Vec<u8> = self.input[start..end].iter().copied().filter(|&b| !is_ws(b)).collect();
        let v = base64::engine::general_purpose::STANDARD
            .decode(&text)
            .map_err(|_| SexpError { offset: start, reason: "invalid base64" })?;
        self.pos = end + 1;
        Ok(v)
    }

    fn parse(&mut self) -> Result<Sexp, SexpError> {
        // Explicit stack, so deep nesting cannot overflow the call stack.
        let mut stack: Vec<Vec<Sexp>> = Vec::new();
        let mut hint_pending = false;
        loop {
            self.skip_ws();
            let b = match self.peek() {
                Some(b) => b,
                None if stack.is_empty() => return Err(self.err("empty input")),
                None => return Err(self.err("unclosed list")),
            };
            let item = match b {
                b'(' => {
                    if hint_pending {
                        return Err(self.err("display hint before a list"));
                    }
                    if stack.len() >= MAX_DEPTH {
                        return Err(self.err("nesting too deep"));
                    }
                    self.pos += 1;
                    stack.push(Vec::new());
                    continue;
                }
                b')' => {
                    if hint_pending {
                        return Err(self.err("display hint without an atom"));
                    }
                    let list = stack.pop().ok_or_else(|| self.err("unbalanced `)`"))?;
                    self.pos += 1;
                    Sexp::List(list)
                }
                b'[' => {
                    if hint_pending {
                        return Err(self.err("nested display hint"));
                    }
                    self.pos += 1;
                    self.skip_ws();
                    self.atom()?;
                    self.skip_ws();
                    if self.peek() != Some(b']') {
                        return Err(self.err("unterminated display hint"));
                    }
                    self.pos += 1;
                    hint_pending = true;
                    continue;
                }
                _ => {
                    hint_pending = false;
                    Sexp::Atom(self.atom()?)
                }
            };
            match stack.last_mut() {
                Some(parent) => parent.push(item),
                None => return Ok(item),
            }
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// How [`Sexp::to_advanced`] prints an atom: libgcrypt's `suitable_encoding`, byte for byte.
///
/// libgcrypt tests "is this byte allowed" with `strchr(set, byte)`, and `strchr` finds the
/// terminating NUL of `set` when `byte` is 0. So a zero byte anywhere but first neither forces
/// hex nor stops an atom from being a token: `41 00 42` prints as the token `A`, NUL, `B` (raw),
/// and `43 FF 00` as a quoted string ending in `\x00`. Only a leading zero byte
/// (or a leading byte ≥ 0x80) forces hex. A random 32-byte value with a printable first byte
/// prints quoted about once in 3,400 (each further byte is non-binary with probability 197/256),
/// and about one in seven of those holds a zero byte: rare, but Guix secret keys (`d`), public
/// points (`q`) and signature values are random, so a test run over many keys meets it.
fn atom_style(a: &[u8]) -> AtomStyle {
    let Some(&first) = a.first() else { return AtomStyle::Quoted };
    if first >= 0x80 || first == 0 {
        return AtomStyle::Hex;
    }
    let mut token = true;
    for &b in a {
        if b != 0
            && (b < 0x20 || (0x7f..=0xa0).contains(&b))
            && !b"\x08\t\x0b\n\x0c\r\"'\\".contains(&b)
        {
            return AtomStyle::Hex;
        }
        if b != 0 && !is_token_char(b) {
            token = false;
        }
    }
    if token && !first.is_ascii_digit() {
        AtomStyle::Token
    } else {
        AtomStyle::Quoted
    }
}

enum AtomStyle {
    Hex,
    Token,
    Quoted,
}

fn write_atom_advanced(out: &mut Vec<u8>, a: &[u8]) {
    match atom_style(a) {
        AtomStyle::Token => out.extend_from_slice(a),
        AtomStyle::Hex => {
            out.push(b'#');
            out.extend_from_slice(hex::encode_upper(a).as_bytes());
            out.push(b'#');
        }
        AtomStyle::Quoted => {
            out.push(b'"');
            for &b in a {
                match b {
                    0x08 => out.extend_from_slice(b"\\b"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    0x0b => out.extend_from_slice(b"\\v"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    0x0c => out.extend_from_slice(b"\\f"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\'' => out.extend_from_slice(b"\\'"),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b if b < 0x20 || (0x7f..=0xa0).contains(&b) => {
                        out.extend_from_slice(format!("\\x{b:02x}").as_bytes())
                    }
                    b => out.push(b),
                }
            }
            out.push(b'"');
        }
    }
}

impl Sexp {
    /// Parse one S-expression in any form libgcrypt reads (see the module docs).
    pub fn parse(input: &[u8]) -> Result<Sexp, SexpError> {
        let mut p = Parser { input, pos: 0 };
        let v = p.parse()?;
        while p.peek().is_some_and(|b| is_ws(b) || b == 0) {
            p.pos += 1;
        }
        if p.pos != input.len() {
            return Err(p.err("trailing data after the S-expression"));
        }
        Ok(v)
    }

    /// An atom from bytes.
    pub fn atom(bytes: impl Into<Vec<u8>>) -> Sexp {
        Sexp::Atom(bytes.into())
    }

    /// A list.
    pub fn list(items: impl Into<Vec<Sexp>>) -> Sexp {
        Sexp::List(items.into())
    }

    /// The atom's bytes, if this is an atom.
    pub fn as_atom(&self) -> Option<&[u8]> {
        match self {
            Sexp::Atom(a) => Some(a),
            Sexp::List(_) => None,
        }
    }

    /// The list's items, if this is a list.
    pub fn as_list(&self) -> Option<&[Sexp]> {
        match self {
            Sexp::List(l) => Some(l),
            Sexp::Atom(_) => None,
        }
    }

    /// The head atom of a list (`public-key` in `(public-key …)`).
    pub fn head(&self) -> Option<&[u8]> {
        self.as_list()?.first()?.as_atom()
    }

    /// Item `n` of a list.
    pub fn nth(&self, n: usize) -> Option<&Sexp> {
        self.as_list()?.get(n)
    }

    /// The first list, in depth-first pre-order starting with `self`, whose head atom is
    /// `token`: libgcrypt's `gcry_sexp_find_token`, which Guix uses to find the parts of keys
    /// and signatures.
    pub fn find_token(&self, token: &str) -> Option<&Sexp> {
        let mut stack = vec![self];
        while let Some(s) = stack.pop() {
            if let Sexp::List(items) = s {
                if items.first().and_then(Sexp::as_atom) == Some(token.as_bytes()) {
                    return Some(s);
                }
                stack.extend(items.iter().rev());
            }
        }
        None
    }

    /// Canonical form: `(3:foo3:bar)`, no whitespace.
    pub fn to_canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_canonical(&mut out);
        out
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        match self {
            Sexp::Atom(a) => {
                out.extend_from_slice(a.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(a);
            }
            Sexp::List(items) => {
                out.push(b'(');
                for i in items {
                    i.write_canonical(out);
                }
                out.push(b')');
            }
        }
    }

    /// libgcrypt's "advanced" text, byte for byte as `gcry_sexp_sprint(…, GCRYSEXP_FMT_ADVANCED)`
    /// writes it (the layout of Guix's key, ACL and signature files).
    pub fn to_advanced(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Sexp::Atom(a) => write_atom_advanced(&mut out, a),
            Sexp::List(_) => self.write_advanced_list(&mut out, 0),
        }
        out.push(b'\n');
        out
    }

    /// [`Sexp::to_advanced`] as a string (lossy only for non-UTF-8 quoted atoms).
    pub fn to_advanced_string(&self) -> String {
        String::from_utf8_lossy(&self.to_advanced()).into_owned()
    }

    /// Write a list opened at `depth` (number of lists open before it).
    fn write_advanced_list(&self, out: &mut Vec<u8>, depth: usize) {
        let Sexp::List(items) = self else { return };
        if depth > 0 {
            out.push(b'\n');
            out.extend(std::iter::repeat_n(b' ', depth));
        }
        out.push(b'(');
        let inner = depth + 1;
        for (i, item) in items.iter().enumerate() {
            let next = items.get(i + 1);
            match item {
                Sexp::Atom(a) => {
                    write_atom_advanced(out, a);
                    if next.is_some() {
                        out.push(b' ');
                    }
                }
                Sexp::List(_) => {
                    item.write_advanced_list(out, inner);
                    // After `)`: newline + indent unless a `(` follows (it adds its own).
                    if !matches!(next, Some(Sexp::List(_))) {
                        out.push(b'\n');
                        out.extend(std::iter::repeat_n(b' ', inner));
                    }
                }
            }
        }
        out.push(b')');
    }
}

impl fmt::Debug for Sexp {
    /// The canonical-ish compact form, with atoms printed as in the advanced form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sexp::Atom(a) => {
                let mut v = Vec::new();
                write_atom_advanced(&mut v, a);
                f.write_str(&String::from_utf8_lossy(&v))
            }
            Sexp::List(items) => {
                f.write_str("(")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    fmt::Debug::fmt(item, f)?;
                }
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for Sexp {
    /// The advanced form without its final newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_advanced_string();
        f.write_str(s.strip_suffix('\n').unwrap_or(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: &str = "(public-key \n (ecc \n  (curve Ed25519)\n  (q #CB3587052FA6E8AB6EF6AF22CA4CD7F509DD5FC86141FE4C87A97E39638DF531#)\n  )\n )\n";

    #[test]
    fn advanced_round_trip_key_file() {
        let s = Sexp::parse(PUB.as_bytes()).unwrap();
        assert_eq!(s.head(), Some(&b"public-key"[..]));
        assert_eq!(String::from_utf8(s.to_advanced()).unwrap(), PUB);
        let canon = s.to_canonical();
        assert!(canon.starts_with(b"(10:public-key(3:ecc(5:curve7:Ed25519)(1:q32:"));
        assert_eq!(Sexp::parse(&canon).unwrap(), s);
    }

    #[test]
    fn acl_layout() {
        let q = Sexp::atom(vec![0xAB; 2]);
        let key = Sexp::list(vec![
            Sexp::atom("public-key"),
            Sexp::list(vec![
                Sexp::atom("ecc"),
                Sexp::list(vec![Sexp::atom("curve"), Sexp::atom("Ed25519")]),
                Sexp::list(vec![Sexp::atom("q"), q]),
            ]),
        ]);
        let acl = Sexp::list(vec![
            Sexp::atom("acl"),
            Sexp::list(vec![
                Sexp::atom("entry"),
                key,
                Sexp::list(vec![
                    Sexp::atom("tag"),
                    Sexp::list(vec![Sexp::atom("guix"), Sexp::atom("import")]),
                ]),
            ]),
        ]);
        assert_eq!(
            acl.to_advanced_string(),
            "(acl \n (entry \n  (public-key \n   (ecc \n    (curve Ed25519)\n    (q #ABAB#)\n    )\n   )\n  (tag \n   (guix import)\n   )\n  )\n )\n"
        );
        assert_eq!(Sexp::list(vec![Sexp::atom("acl")]).to_advanced_string(), "(acl)\n");
    }

    #[test]
    fn atom_forms() {
        let s = Sexp::parse(
            b"(a \"x\\ny\\x41\\101\\\nz\" #41 42# |QUJD| 3:a(b 3\"abc\" 2#4142# [text/plain]hint \"\")",
        )
        .unwrap();
        let items = s.as_list().unwrap();
        assert_eq!(items[1].as_atom().unwrap(), b"x\nyAAz");
        assert_eq!(items[2].as_atom().unwrap(), b"AB");
        assert_eq!(items[3].as_atom().unwrap(), b"ABC");
        assert_eq!(items[4].as_atom().unwrap(), b"a(b");
        assert_eq!(items[5].as_atom().unwrap(), b"abc");
        assert_eq!(items[6].as_atom().unwrap(), b"AB");
        assert_eq!(items[7].as_atom().unwrap(), b"hint");
        assert_eq!(items[8].as_atom().unwrap(), b"");
        assert_eq!(
            Sexp::parse(b"(a \"1ab\" \"a b\" #00# #7F# \"\\x00z\")").unwrap().to_advanced_string(),
            "(a \"1ab\" \"a b\" #00# #7F# #007A#)\n"
        );
    }

    #[test]
    fn zero_bytes_print_as_libgcrypt_prints_them() {
        // Each atom and what libgcrypt 1.10's `gcry_sexp_sprint` (advanced) prints for it.
        for (atom, printed) in [
            (&b"A\0B"[..], &b"A\0B"[..]),
            (b"A\0", b"A\0"),
            (b"A\0\0\0", b"A\0\0\0"),
            (b"A\0\x1fB", b"#41001F42#"),
            (b"\0ABC", b"#00414243#"),
            (b"A\xa1\xff\0", b"\"A\xa1\xff\\x00\""),
            (b"A \0", b"\"A \\x00\""),
            (b"\x7fA", b"#7F41#"),
            (b"A\n\r", b"\"A\\n\\r\""),
        ] {
            let sexp = Sexp::list(vec![Sexp::atom("a"), Sexp::atom(atom)]);
            let text = sexp.to_advanced();
            assert_eq!(text, [&b"(a "[..], printed, b")\n"].concat(), "{atom:?}");
            assert_eq!(Sexp::parse(&text).unwrap(), sexp, "{atom:?}");
        }
    }

    #[test]
    fn errors_not_panics() {
        for bad in [
            &b""[..],
            b"(",
            b")",
            b"(a",
            b"(a))",
            b"(#4#)",
            b"(#zz#)",
            b"(\"abc)",
            b"(99999999999999999999999:a)",
            b"(5:ab)",
            b"(3\"ab\")",
            b"(|!!|)",
            b"([x](a))",
            b"(\"\\q\")",
            b"(a) b",
        ] {
            assert!(Sexp::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "(".repeat(100_000);
        assert!(Sexp::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn find_token_preorder() {
        let s = Sexp::parse(b"(signature (data (hash sha256 #00#)) (x (hash md5 #01#)))").unwrap();
        assert_eq!(s.find_token("hash").unwrap().nth(1).unwrap().as_atom().unwrap(), b"sha256");
        assert!(s.find_token("nope").is_none());
        assert_eq!(s.find_token("signature"), Some(&s));
    }
}
