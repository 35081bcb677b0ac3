//! Text from a peer is data: [`peer_text`] is how every message, reason and stderr a peer sent
//! is made safe to show on a terminal or write to a log.
//!
//! A peer (an agent, a pulled host, a relay) chooses these bytes. Shown raw they could move the
//! cursor, rewrite earlier lines, set the terminal title or fill memory and scrollback, so each
//! is cut to a length and its control characters are escaped before it is stored or shown.

/// Longest peer message kept: `Reject` and `Error` texts (longer ones are cut, with a note).
pub const MAX_PEER_MESSAGE: usize = 4 << 10;

/// `text` from a peer, safe to show: every control character but newline and tab is escaped
/// as `\u{…}` (`\r`, escape sequences, C1 controls, DEL, and the bidirectional overrides that
/// reorder what a terminal shows), and the result is at most `max` bytes (when cut, it ends
/// with `… (N more bytes)`, N counting the peer's bytes not shown). Idempotent: a text already
/// made safe comes back unchanged.
pub fn peer_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    // Room kept for the note when the text must be cut.
    let budget = max.saturating_sub(NOTE_ROOM);
    let mut cut_at = None;
    for (i, c) in text.char_indices() {
        let before = out.len();
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
        if cut_at.is_none() && out.len() > budget {
            cut_at = Some((i, before));
        }
        if out.len() > max {
            break;
        }
    }
    if out.len() <= max {
        return out;
    }
    let (i, keep) = cut_at.expect("past max means past the budget");
    out.truncate(keep);
    out.push_str(&format!("… ({} more bytes)", text.len() - i));
    out
}

/// Bytes kept for `… (N more bytes)`.
const NOTE_ROOM: usize = 32;

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
        let long = "x".repeat(100);
        let shown = peer_text(&long, 50);
        assert_eq!(shown, format!("{}… (82 more bytes)", "x".repeat(18)));
        assert!(shown.len() <= 50);
        // Idempotent, controls or not.
        let nasty = format!("\x1b[2J{}", "\u{7}".repeat(100));
        let once = peer_text(&nasty, 64);
        assert!(once.len() <= 64, "{once}");
        assert_eq!(peer_text(&once, 64), once);
    }
}
