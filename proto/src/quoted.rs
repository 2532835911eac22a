//! Go's splitting of flag lists (cmd/internal/quoted.Split): fields separated by ASCII white
//! space, a field that *starts* with `'` or `"` runs to the matching quote with nothing
//! unescaped inside. The go command splits `-ldflags`, `-gcflags`, `-asmflags`, GOFLAGS and the
//! CGO_*FLAGS variables this way, so checking any other split would check other flags than the
//! ones the tools see. The server checks jobs' flags and the wrapper reads builds' flags
//! with this one reading.

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// The fields of `text`, or why it does not split (an unterminated quote).
pub fn split(text: &str) -> Result<Vec<&str>, String> {
    let mut fields = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii() && is_space(c as u8));
        let Some(&first) = rest.as_bytes().first() else { return Ok(fields) };
        if first == b'\'' || first == b'"' {
            let body = &rest[1..];
            let end =
                body.find(first as char).ok_or_else(|| format!("unterminated {} string", first as char))?;
            fields.push(&body[..end]);
            rest = &body[end + 1..];
        } else {
            let end = rest.bytes().position(is_space).unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_like_go() {
        // The cases of cmd/internal/quoted's own tests.
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("  ", &[]),
            ("a", &["a"]),
            (" a ", &["a"]),
            ("a b\tc\nd", &["a", "b", "c", "d"]),
            ("'a b' c", &["a b", "c"]),
            (r#""a 'b'" c"#, &["a 'b'", "c"]),
            ("'a''b'", &["a", "b"]),
            ("a'b c'", &["a'b", "c'"]),
            ("''", &[""]),
            ("-X 'main.v=1 2' -s", &["-X", "main.v=1 2", "-s"]),
        ];
        for (text, fields) in cases {
            assert_eq!(split(text).unwrap(), *fields, "{text:?}");
        }
        assert!(split("'a").unwrap_err().contains("unterminated '"));
        assert!(split("a \"b").unwrap_err().contains("unterminated \""));
    }
}
