//! Text from a peer is data: [`peer_text`] is how every message, reason and stderr a peer sent
//! is made safe to show on a terminal or write to a log.
//!
//! A peer (an agent, a pulled host, a relay) chooses these bytes. Shown raw they could move the
//! cursor, rewrite earlier lines, set the terminal title or fill memory and scrollback, so each
//! is cut to a length and its control characters are escaped before it is stored or shown.

/// Longest peer message kept: `Reject` and `Error` texts (longer ones are cut, with a note).
pub const MAX_PEER_MESSAGE: usize = 4 << 10;

/// `text` from a peer, safe to show: at most `max` bytes of it are kept (cut at a character
/// boundary, with `… (N more bytes)` after), and every control character but newline and tab
/// is escaped as `\u{…}` (`\r`, escape sequences, C1 controls, DEL, and the bidirectional
/// overrides that reorder what a terminal shows).
pub fn peer_text(text: &str, max: usize) -> String {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + 16);
    for c in text[..cut].chars() {
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    if cut < text.len() {
        out.push_str(&format!("… ({} more bytes)", text.len() - cut));
    }
    out
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_caps_length() {
        assert_eq!(peer_text("plain\ttext\nline 2", 100), "plain\ttext\nline 2");
        assert_eq!(peer_text("\x1b[2Jx\r\u{9b}\u{202e}", 100), "\\u{1b}[2Jx\\u{d}\\u{9b}\\u{202e}");
        assert_eq!(peer_text("abcdef", 3), "abc… (3 more bytes)");
        // Never cut inside a character.
        assert_eq!(peer_text("é", 1), "… (2 more bytes)");
    }
}
