//! Values shown on a terminal. Raw bytes written to a terminal can move the cursor, change colours or
//! retitle the window (escape sequences), and binary data garbles the screen; so when stdout is a terminal,
//! text output goes through [`for_terminal`], like redis-cli's quoting. Into a pipe or file, bytes stay raw.

use std::fmt::Write as _;
use std::io::Write;

/// Writes a key or value of text output: escaped when `tty` (stdout is a terminal), raw otherwise.
pub fn show(out: &mut impl Write, bytes: &[u8], tty: bool) -> std::io::Result<()> {
    if tty {
        out.write_all(for_terminal(bytes).as_bytes())
    } else {
        out.write_all(bytes)
    }
}

/// The bytes as printable text: printable UTF-8 stays as is; `\` becomes `\\`; newline, carriage return
/// and tab become `\n`, `\r`, `\t`; other ASCII control bytes and bytes that are not UTF-8 become `\xHH`;
/// other control characters (C1) become `\u{HH}`. The result is unambiguous: it holds no control character
/// and every `\` starts an escape.
pub fn for_terminal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", u32::from(c));
                }
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_binary_bytes_are_escaped_and_text_is_kept() {
        assert_eq!(for_terminal(b"hello world"), "hello world");
        assert_eq!(for_terminal("grüße, 東京".as_bytes()), "grüße, 東京");
        assert_eq!(for_terminal(b"a\tb\nc\r"), "a\\tb\\nc\\r");
        assert_eq!(for_terminal(b"back\\slash"), "back\\\\slash");
        // An escape sequence (clear screen) and DEL cannot reach the terminal.
        assert_eq!(for_terminal(b"\x1b[2J\x7f\x00"), "\\x1b[2J\\x7f\\x00");
        // Bytes that are not UTF-8, alone and next to valid text.
        assert_eq!(for_terminal(&[0xff, b'a', 0xc3]), "\\xffa\\xc3");
        // C1 control characters (U+009B is a one-character CSI).
        assert_eq!(for_terminal("x\u{9b}y".as_bytes()), "x\\u{9b}y");
        assert_eq!(for_terminal(b""), "");
    }
}
