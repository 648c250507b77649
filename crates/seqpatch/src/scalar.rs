//! The reference implementation of crossing a container, one byte at a time.
//!
//! Every vector implementation must give exactly the same answer as this one
//! for every input, valid JSON or not; the tests check that.
//!
//! The rules, which are all a structural crossing knows:
//! - a backslash that is not itself escaped escapes the byte after it,
//!   wherever it stands (in valid JSON that is only inside strings);
//! - an unescaped `"` opens or closes a string;
//! - outside strings, an unescaped `{` or `[` opens a level and an unescaped
//!   `}` or `]` closes one (kinds are not matched against each other);
//! - the container ends where the level it opened is closed.

use crate::error::{Error, ErrorKind};

/// Returns the index just past the bracket that closes the container opening
/// at `buf[start]`, which must be `{` or `[`.
pub(crate) fn skip_container(buf: &[u8], start: usize) -> Result<usize, Error> {
    debug_assert!(matches!(buf.get(start), Some(b'{' | b'[')));
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = start;
    while let Some(&byte) = buf.get(i) {
        match byte {
            b'\\' => i += 1,
            b'"' => in_string = !in_string,
            b'{' | b'[' if !in_string => depth += 1,
            b'}' | b']' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(Error::new(ErrorKind::UnexpectedEnd, buf.len()))
}
