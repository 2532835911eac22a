//! Reading C-like text for the directives that name files, the way the preprocessor's first
//! phases read it: physical lines end at a line feed, a carriage return or both; a backslash
//! followed by blanks and a line end joins two lines; comments (`/* */` across lines, `//`)
//! count as a space, and string, character and raw string literals are not comments. Where the
//! scan cannot tell what the compiler will read, the line gives [`Directive::Ambiguous`] and
//! the build no key: the reading fails closed.
//!
//! The lexer's reading may not be the compiler's (the language standard, gnu or ISO mode,
//! assembler mode are not known here), so a file is read several ways and what any finds is
//! keyed ([`Reader`]): the lexer with and without digit separators; each physical line as it
//! is; each logical line as splices make it, and its text after each `*/`; each line of a block
//! comment that starts inside it. In the last readings an include named by a macro gives no
//! key, since their text may be a directive to the compiler.

use std::collections::HashSet;

use super::Directive;

/// The most of a logical line kept for matching, past its leading blanks: a directive and its
/// path fit well within it.
const MAX_LINE: usize = 8192;
/// Directives one file may hold: a header of repeated includes would otherwise become millions
/// of entries in the agent's memory.
pub(super) const MAX_DIRECTIVES: usize = 4096;
/// The most of a group of Go comments kept for its `#cgo` lines: a preamble holds a few.
const MAX_GROUP: usize = 1 << 20;
/// Raw string delimiters are at most this long (C++ `R"delim(...)delim"`).
const MAX_RAW_DELIMITER: usize = 16;
/// What may come before a directive on its line: blanks (form feed and vertical tab are
/// blanks to gcc) and, on a file's first line, a byte order mark.
const LEADING_BLANKS: [char; 5] = ['\u{feff}', ' ', '\t', '\x0b', '\x0c'];
/// Words that, past the part of a line kept, may name a file for the compiler or assembler.
const FILE_WORDS: [&[u8]; 4] = [b"include", b"incbin", b"import", b"embed"];

/// Where the lexer is (translation phase 3).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum Lex {
    #[default]
    Code,
    /// A `/` in code: a comment may start.
    Slash,
    Block,
    BlockStar,
    Line,
    /// A `'` after a number: a digit separator when a digit or letter follows, else the quote
    /// of a character literal.
    NumberQuote,
    /// In a string or character literal (its quote), after a backslash or not.
    Literal(u8, bool),
    /// After `R"`, reading the delimiter up to `(`.
    RawOpening(Vec<u8>),
    /// In a raw string: its delimiter, and how much of `)delimiter"` was just seen.
    Raw(Vec<u8>, usize),
}

/// Reads one file's bytes into its directives.
struct Reading {
    /// The last byte was a carriage return, which ended a line: a line feed after it adds none.
    after_cr: bool,
    /// A backslash and the blanks after it, held until what follows says whether they join
    /// two lines.
    splice: Vec<u8>,
    /// The last three bytes of the physical line, for a trigraph `??/` at its end.
    tail: [u8; 3],
    lex: Lex,
    /// The block comment open now started on an earlier physical line.
    comment_spans_lines: bool,
    /// The text of the open block comment's current physical line, splices joined, when that
    /// line started inside the comment: read for the files it names, since where the scan's
    /// reading of literals is not the compiler's (raw strings and splices, trigraphs in ISO
    /// modes, pp-numbers) the compiler may see code, and a spliced directive, there.
    comment_line: Vec<u8>,
    comment_line_read: bool,
    comment_line_cut: bool,
    /// The logical line so far, comments as spaces.
    line: Vec<u8>,
    /// Where text after a comment that ended on a later physical line starts in `line`: read
    /// as a line of its own too (compilers differ on whether a directive may start there).
    restarts: Vec<usize>,
    /// Non-blank bytes were dropped past [`MAX_LINE`]; the last of them, for [`FILE_WORDS`].
    cut: Option<Vec<u8>>,
    cut_names_a_file: bool,
    /// The line gives no key whatever it holds.
    ambiguous: Option<&'static str>,
    /// The physical line as it is, read for directives too: where the lexer's reading of
    /// comments and literals is not the compiler's (a mode the scan does not know, a dialect),
    /// a directive at a line's start is still found. Keying more files than the compiler
    /// reads is harmless; keying fewer is not.
    physical: Vec<u8>,
    physical_cut: bool,
    /// The logical line as splices make it, whatever the lexer takes its text for: read for
    /// the files it names, since the lexer's reading of comments and literals may not be the
    /// compiler's (raw strings and splices, trigraphs in ISO modes, assembler modes).
    spliced: Vec<u8>,
    spliced_cut: bool,
    /// The last bytes cut from `spliced`, and whether what was cut names a file.
    spliced_dropped: Vec<u8>,
    spliced_cut_names_a_file: bool,
    /// Fortran's own `include 'file'` is matched too.
    fortran: bool,
    /// Whether a `'` after a number is a digit separator (C++14, C23) or a quote (C before
    /// C23, gcc's default for .c files before gcc 15): the scan does not know the standard.
    digit_separators: bool,
    /// Whether this reading also reads each physical line as it is (one reading of a file
    /// does: the view is the same for both).
    reads_physical_lines: bool,
    found: Vec<Directive>,
    /// What `found` holds, so a directive both readings find counts once.
    seen: HashSet<Directive>,
}

impl Reading {
    fn new(fortran: bool, digit_separators: bool) -> Self {
        Self {
            after_cr: false,
            splice: Vec::new(),
            tail: [0; 3],
            lex: Lex::Code,
            comment_spans_lines: false,
            comment_line: Vec::new(),
            comment_line_read: false,
            comment_line_cut: false,
            line: Vec::new(),
            restarts: Vec::new(),
            cut: None,
            cut_names_a_file: false,
            ambiguous: None,
            physical: Vec::new(),
            physical_cut: false,
            spliced: Vec::new(),
            spliced_cut: false,
            spliced_dropped: Vec::new(),
            spliced_cut_names_a_file: false,
            fortran,
            digit_separators,
            reads_physical_lines: digit_separators,
            found: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// The directives read, once the text is over.
    pub(super) fn finish(mut self) -> Vec<Directive> {
        self.end_text();
        self.found
    }

    /// Ends a text: a cgo preamble's comment group is one, and the next group starts afresh
    /// (a `/*` in one group's text opens no comment in the next).
    pub(super) fn end_text(&mut self) {
        for held in std::mem::take(&mut self.splice) {
            self.lex_byte(held);
        }
        self.physical_view();
        self.physical_line_end();
        // A text that ends inside a comment or raw string ends its line too.
        if !self.line.is_empty() || !self.restarts.is_empty() || self.ambiguous.is_some() {
            self.end_line();
        }
        self.lex = Lex::Code;
        self.comment_spans_lines = false;
        self.tail = [0; 3];
        self.after_cr = false;
    }

    pub(super) fn byte(&mut self, byte: u8) {
        let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
        if byte == b'\n' && after_cr {
            return;
        }
        let line_end = matches!(byte, b'\n' | b'\r');
        if line_end {
            self.physical_view();
        } else {
            self.keep_physical(byte);
        }
        if !self.splice.is_empty() {
            if line_end {
                // Backslash, blanks, line end: the next physical line continues this one.
                self.splice.clear();
                return;
            }
            if is_blank(byte) {
                self.splice.push(byte);
                return;
            }
            for held in std::mem::take(&mut self.splice) {
                self.lex_byte(held);
            }
        }
        if !line_end && !is_blank(byte) {
            self.tail = [self.tail[1], self.tail[2], byte];
        }
        if byte == b'\\' {
            self.splice.push(byte);
        } else if line_end {
            self.physical_line_end();
        } else {
            self.lex_byte(byte);
        }
    }

    fn keep_physical(&mut self, byte: u8) {
        if !self.reads_physical_lines || (self.physical.is_empty() && is_blank(byte)) {
            return;
        }
        if self.physical.len() < MAX_LINE {
            self.physical.push(byte);
        } else if !is_blank(byte) {
            self.physical_cut = true;
        }
    }

    /// The directives of the physical line just ended, read as it is.
    fn physical_view(&mut self) {
        let line = std::mem::take(&mut self.physical);
        if !std::mem::take(&mut self.physical_cut) {
            // Only what the line names outright counts here: the lexer's view decides what
            // gives no key, so text in a comment (`see .incbin`) never refuses a build.
            // Text after a `*/` is read as a line too: a comment that started on an earlier
            // line may end there, which the lexer's view could not tell (it read a literal).
            let after_comment = line.windows(2).position(|pair| pair == b"*/").map(|end| &line[end + 2..]);
            for view in [Some(&line[..]), after_comment].into_iter().flatten() {
                self.add_named_files(&without_comments(view), false);
            }
        }
    }

    /// The logical line as splices made it, comments on it stripped, for the files it names.
    fn spliced_view(&mut self) {
        let line = std::mem::take(&mut self.spliced);
        self.spliced_dropped.clear();
        let cut_names_a_file = std::mem::take(&mut self.spliced_cut_names_a_file);
        // Whatever the line holds past the cut may be a directive (after a `*/`, say).
        let names_a_file = || {
            cut_names_a_file
                || FILE_WORDS.iter().any(|word| line.windows(word.len()).any(|part| part == *word))
        };
        if std::mem::take(&mut self.spliced_cut) && (may_be_directive(&line) || names_a_file()) {
            self.push(Directive::Ambiguous(format!("a line longer than {MAX_LINE} bytes")));
            return;
        }
        if let Some(why) = unreadable_line(&line) {
            self.push(Directive::Ambiguous(why.to_owned()));
            return;
        }
        self.add_named_files(&without_comments(&line), true);
        // After a `*/` the line may start over for the compiler: a comment that began at a
        // line's start, which the lexer may have taken for a literal, ended there.
        for (end, _) in line.windows(2).enumerate().filter(|(_, pair)| *pair == b"*/") {
            self.add_named_files(&without_comments(&line[end + 2..]), true);
        }
    }

    /// The files `line` names outright, as a directive would. Text in a comment (`see
    /// .incbin`) is no reason for no key; but with `spliced` (a logical line, splices joined)
    /// a line that starts as an include whose file a macro names is: these views read text the
    /// lexer took for a comment or a literal, which the compiler may read as a directive. A
    /// physical line may end in a splice (`#include \`), so it is never one.
    fn add_named_files(&mut self, line: &[u8], spliced: bool) {
        let preprocessor_line = spliced && is_preprocessor_line(line);
        for directive in directives(line, self.fortran) {
            match directive {
                Directive::Include(_) | Directive::System(_) | Directive::Incbin(_) => self.push(directive),
                Directive::Computed(what) if preprocessor_line => self.push(Directive::Computed(what)),
                _ => {}
            }
        }
    }

    /// Adds a directive once; one past the cap is kept, to say the file went past it.
    fn push(&mut self, directive: Directive) {
        if self.found.len() <= MAX_DIRECTIVES && self.seen.insert(directive.clone()) {
            self.found.push(directive);
        }
    }

    /// Gives the file no key, for `why`.
    pub(super) fn ambiguous_text(&mut self, why: &str) {
        self.push(Directive::Ambiguous(why.to_owned()));
    }

    /// A `#cgo` line of a Go file's comments (go/build reads them line by line from the
    /// comment group's text, apart from the C preprocessor).
    pub(super) fn cgo(&mut self, line: String) {
        self.push(Directive::Cgo(line));
    }

    fn physical_line_end(&mut self) {
        self.spliced_view();
        // `??/` is the trigraph of a backslash: whether it joins this line to the next (blanks
        // between or not) depends on the compiler's mode (-std=c99 or gnu99), which the scan
        // does not know.
        if &self.tail == b"??/" {
            self.ambiguous = Some("a line that ends in the trigraph ??/");
        }
        self.tail = [0; 3];
        match std::mem::take(&mut self.lex) {
            Lex::Slash => self.emit(b'/'),
            Lex::Block | Lex::BlockStar => {
                // The comment, line end included, is one space: the logical line goes on.
                self.lex = Lex::Block;
                self.comment_spans_lines = true;
                self.read_comment_line();
                self.comment_line_read = true;
                return;
            }
            Lex::Raw(delimiter, seen) => {
                self.lex = Lex::Raw(delimiter, seen);
                self.end_line();
                return;
            }
            // A literal or comment ends with its line; an unfinished raw string opening is none.
            Lex::Code | Lex::Line | Lex::NumberQuote | Lex::Literal(..) | Lex::RawOpening(_) => {}
        }
        self.end_line();
    }

    /// One byte of a physical line, in translation phase 3.
    fn lex_byte(&mut self, byte: u8) {
        if self.reads_physical_lines && !(self.spliced.is_empty() && is_blank(byte)) {
            if self.spliced.len() < MAX_LINE {
                self.spliced.push(byte);
            } else if !is_blank(byte) {
                self.spliced_cut = true;
                let tail = &mut self.spliced_dropped;
                tail.push(byte);
                if tail.len() > 8 {
                    tail.remove(0);
                }
                self.spliced_cut_names_a_file |= FILE_WORDS.iter().any(|word| tail.ends_with(word));
            }
        }
        match std::mem::take(&mut self.lex) {
            Lex::Code => self.code(byte),
            Lex::Slash => match byte {
                b'*' => {
                    self.emit(b' ');
                    self.comment_spans_lines = false;
                    self.comment_line.clear();
                    self.comment_line_read = false;
                    self.lex = Lex::Block;
                }
                b'/' => {
                    self.emit(b' ');
                    self.lex = Lex::Line;
                }
                _ => {
                    self.emit(b'/');
                    self.code(byte);
                }
            },
            Lex::Block => {
                self.keep_comment_byte(byte);
                self.lex = if byte == b'*' { Lex::BlockStar } else { Lex::Block };
            }
            Lex::BlockStar => match byte {
                b'/' => {
                    self.read_comment_line();
                    // The text after a comment that started on an earlier line is read as a
                    // line too.
                    if self.comment_spans_lines {
                        self.restarts.push(self.line.len());
                    }
                }
                b'*' => {
                    self.keep_comment_byte(byte);
                    self.lex = Lex::BlockStar;
                }
                _ => {
                    self.keep_comment_byte(byte);
                    self.lex = Lex::Block;
                }
            },
            Lex::Line => self.lex = Lex::Line,
            Lex::NumberQuote if byte.is_ascii_alphanumeric() || byte == b'_' => self.emit(byte),
            Lex::NumberQuote => {
                self.lex = Lex::Literal(b'\'', false);
                self.lex_byte(byte);
            }
            Lex::Literal(quote, escaped) => {
                self.emit(byte);
                self.lex = match (escaped, byte) {
                    (true, _) => Lex::Literal(quote, false),
                    (false, b'\\') => Lex::Literal(quote, true),
                    (false, _) if byte == quote => Lex::Code,
                    _ => Lex::Literal(quote, false),
                };
            }
            Lex::RawOpening(mut delimiter) => {
                self.emit(byte);
                if byte == b'(' {
                    self.lex = Lex::Raw(delimiter, 0);
                } else if delimiter.len() < MAX_RAW_DELIMITER && !b" ()\\\t\x0b\x0c".contains(&byte) {
                    delimiter.push(byte);
                    self.lex = Lex::RawOpening(delimiter);
                } else {
                    // No raw string after all: an ordinary one, as far as the scan can tell.
                    self.lex = Lex::Literal(b'"', false);
                }
            }
            Lex::Raw(delimiter, seen) => {
                self.emit(byte);
                let seen = match (seen, byte) {
                    (_, b')') => 1,
                    (0, _) => 0,
                    (seen, b'"') if seen == delimiter.len() + 1 => {
                        self.restarts.push(self.line.len());
                        return;
                    }
                    (seen, _) if delimiter.get(seen - 1) == Some(&byte) => seen + 1,
                    _ => 0,
                };
                self.lex = Lex::Raw(delimiter, seen);
            }
        }
    }

    fn keep_comment_byte(&mut self, byte: u8) {
        if self.comment_line.is_empty() && is_blank(byte) {
            return;
        }
        if self.comment_line.len() < MAX_LINE {
            self.comment_line.push(byte);
        } else if !is_blank(byte) {
            self.comment_line_cut = true;
        }
    }

    /// The files the block comment's line names, if it started inside the comment. Only
    /// what it names outright counts, as in the physical-line view; a cut line that may be a
    /// directive gives no key.
    fn read_comment_line(&mut self) {
        let line = std::mem::take(&mut self.comment_line);
        let cut = std::mem::take(&mut self.comment_line_cut);
        if !std::mem::take(&mut self.comment_line_read) {
            return;
        }
        if cut && may_be_directive(&line) {
            self.push(Directive::Ambiguous(format!("a line longer than {MAX_LINE} bytes in a comment")));
            return;
        }
        self.add_named_files(&line, true);
    }

    fn code(&mut self, byte: u8) {
        match byte {
            b'/' => self.lex = Lex::Slash,
            b'"' => {
                self.lex =
                    if self.raw_prefix() { Lex::RawOpening(Vec::new()) } else { Lex::Literal(b'"', false) };
                self.emit(byte);
            }
            b'\'' if self.digit_separators && ends_in_number(&self.line) => {
                self.lex = Lex::NumberQuote;
                self.emit(byte);
            }
            b'\'' => {
                self.lex = Lex::Literal(b'\'', false);
                self.emit(byte);
            }
            _ => self.emit(byte),
        }
    }

    /// Whether the code before a `"` makes it a raw string: `R`, `u8R`, `uR`, `UR` or `LR`,
    /// not the end of a longer identifier.
    fn raw_prefix(&self) -> bool {
        if self.digit_separators && ends_in_number(&self.line) {
            return false;
        }
        let Some(before) = self.line.strip_suffix(b"R") else { return false };
        let before = [&b"u8"[..], b"u", b"U", b"L"]
            .iter()
            .find_map(|prefix| before.strip_suffix(*prefix))
            .unwrap_or(before);
        // gcc takes `$` and UTF-8 in identifiers: `$R"` is an identifier and a string.
        !before.last().is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$') || *b >= 0x80)
    }

    fn emit(&mut self, byte: u8) {
        if self.line.is_empty() && is_blank(byte) {
            return;
        }
        if self.line.len() < MAX_LINE {
            self.line.push(byte);
            return;
        }
        if is_blank(byte) {
            return;
        }
        let cut = self.cut.get_or_insert_with(Vec::new);
        cut.push(byte);
        if cut.len() > 8 {
            cut.remove(0);
        }
        self.cut_names_a_file |= FILE_WORDS.iter().any(|word| cut.ends_with(word));
    }

    /// The logical line is over: its directives, or why it gives no key.
    fn end_line(&mut self) {
        let mut found = Vec::new();
        if let Some(why) = self.ambiguous.take() {
            found.push(Directive::Ambiguous(why.to_owned()));
        } else if self.cut.is_some() && (self.cut_names_a_file || may_be_directive(&self.line)) {
            found.push(Directive::Ambiguous(format!("a line longer than {MAX_LINE} bytes")));
        } else {
            found.extend(directives(&self.line, self.fortran));
            for &start in &self.restarts {
                found.extend(directives(&self.line[start..], self.fortran));
            }
        }
        for directive in found {
            self.push(directive);
        }
        self.line.clear();
        self.restarts.clear();
        self.cut = None;
        self.cut_names_a_file = false;
    }
}

/// Reads one file's bytes into its directives, both ways a `'` after a number may be meant
/// (digit separator or quote): what either reading finds is keyed, once.
pub(super) struct Reader {
    readings: [Reading; 2],
}

impl Reader {
    pub(super) fn new(fortran: bool) -> Self {
        Self { readings: [Reading::new(fortran, true), Reading::new(fortran, false)] }
    }

    pub(super) fn byte(&mut self, byte: u8) {
        if byte == 0 {
            // gcc reads a NUL as a blank, in splices and directives too (with a warning); no
            // honest source holds one.
            self.readings[0].ambiguous_text("a NUL byte, which the compiler reads as a blank");
        }
        self.readings.iter_mut().for_each(|reading| reading.byte(byte));
    }

    /// Ends a text (a cgo preamble's comment group).
    pub(super) fn end_text(&mut self) {
        self.readings.iter_mut().for_each(Reading::end_text);
    }

    /// Gives the file no key, for `why`.
    pub(super) fn ambiguous_text(&mut self, why: &str) {
        self.readings[0].ambiguous_text(why);
    }

    /// A `#cgo` line of a Go file's comments.
    pub(super) fn cgo(&mut self, line: String) {
        self.readings[0].cgo(line);
    }

    pub(super) fn finish(self) -> Vec<Directive> {
        let [with, without] = self.readings;
        let mut union = with.finish();
        let mut seen: HashSet<Directive> = union.iter().cloned().collect();
        union.extend(without.finish().into_iter().filter(|directive| seen.insert(directive.clone())));
        union
    }
}

/// A physical line without what reads as a comment on it alone (`/* */`, and from `//` or an
/// unclosed `/*` to its end), outside double quotes.
fn without_comments(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let (mut at, mut quoted) = (0, false);
    while at < line.len() {
        let rest = &line[at..];
        if !quoted && rest.starts_with(b"//") {
            break;
        }
        if !quoted && rest.starts_with(b"/*") {
            match rest[2..].windows(2).position(|pair| pair == b"*/") {
                Some(end) => {
                    out.push(b' ');
                    at += 2 + end + 2;
                    continue;
                }
                None => break,
            }
        }
        quoted ^= rest[0] == b'"';
        out.push(rest[0]);
        at += 1;
    }
    out
}

/// Whether the last token of `line` is a preprocessing number (`1'000`, `0x1'fp3`, `0'R`):
/// a `'` after one is a digit separator (C++14, C23) and an `R"` in one opens no raw string.
fn ends_in_number(line: &[u8]) -> bool {
    let part_of_number = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'\'');
    // Back to the token's start; a sign after an exponent's e/E/p/P is part of it (`1e+R`).
    let mut start = line.len();
    while start > 0 {
        let byte = line[start - 1];
        let signed_exponent =
            matches!(byte, b'+' | b'-') && start >= 2 && matches!(line[start - 2], b'e' | b'E' | b'p' | b'P');
        if part_of_number(byte) {
            start -= 1;
        } else if signed_exponent {
            start -= 2;
        } else {
            break;
        }
    }
    let token = &line[start..];
    let token = token.strip_prefix(b".").unwrap_or(token);
    token.first().is_some_and(u8::is_ascii_digit)
}

/// Whether `line` starts (after blanks and a byte order mark) as a preprocessor directive:
/// `#`, its digraph `%:` or its trigraph `??=`.
fn is_preprocessor_line(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_start_matches(LEADING_BLANKS);
    text.starts_with('#') || text.starts_with("%:") || text.starts_with("??=")
}

fn is_blank(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | 0x0b | 0x0c)
}

/// Whether a line (its blanks skipped) starts like a directive.
/// Why the compiler may read `line` in a way no reading here follows, if it may: a header name
/// with a comment in it (comments are not stripped inside `<...>`), and `__has_include` outside
/// an `#if`/`#elif` (a macro that asks it is expanded where the scan does not follow).
fn unreadable_line(line: &[u8]) -> Option<&'static str> {
    // Both are directives' (a macro that asks __has_include is defined in one).
    if !is_preprocessor_line(line) {
        return None;
    }
    let text = String::from_utf8_lossy(line);
    let text = text.trim_start_matches(LEADING_BLANKS);
    for word in ["include", "import", "embed", "__has_include"] {
        for (at, _) in text.match_indices(word) {
            let after = text[at + word.len()..].trim_start_matches("_next").trim_start();
            let after = after.strip_prefix('(').map_or(after, str::trim_start);
            let Some(name) = after.strip_prefix('<') else { continue };
            let name = &name[..name.find('>').unwrap_or(name.len())];
            if name.contains("/*") || name.contains("//") {
                return Some("a header name with a comment in it");
            }
        }
    }
    let asks = ["__has_include", "__has_embed"].iter().any(|ask| {
        text.match_indices(ask).any(|(at, word)| {
            let after = text[at + word.len()..].strip_prefix("_next").unwrap_or(&text[at + word.len()..]);
            after.trim_start().starts_with('(')
        })
    });
    let condition = text
        .strip_prefix('#')
        .or_else(|| text.strip_prefix("%:"))
        .map(|rest| split_word(rest.trim_start()).0)
        .is_some_and(|word| matches!(word, "if" | "elif"));
    (asks && !condition).then_some("__has_include or __has_embed outside an #if or #elif (in a macro)")
}

fn may_be_directive(line: &[u8]) -> bool {
    matches!(line.first(), Some(b'#' | b'%' | b'.'))
        || line.starts_with(b"??=")
        || line.starts_with("\u{feff}".as_bytes())
}

/// Where a Go file's lexer is: only comment text reaches the reader.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum GoState {
    #[default]
    Code,
    Slash,
    LineComment,
    Block,
    BlockStar,
    Str(bool),
    Rune(bool),
    Raw,
}

/// The comments of a Go file, where cgo's preamble and `#cgo` lines are, as cgo makes its
/// preamble of them: a line comment's text and a line end, a block comment's text as it is,
/// one after the other within a group of comments (no code or blank line between), so that
/// `/*#inc*/` followed by `/*lude "x.h"*/` includes "x.h". Each group is a text of its own to
/// the C reader, and its `#cgo` lines are read from its text line by line, as go/build reads
/// them. Carriage returns are dropped, as Go's scanner drops them from comments.
#[derive(Default)]
pub(super) struct GoComments {
    state: GoState,
    /// Since the last comment: line ends seen, or `None` after code (or before any comment).
    since_comment: Option<u32>,
    /// The text of the current group of comments, and whether it went past [`MAX_GROUP`].
    group: Vec<u8>,
    group_cut: bool,
    /// A carriage return came right after a block comment's `*`: go's scanner keeps it if a
    /// `/` follows (`*\r/` does not end the comment, and cgo's text holds it).
    held_cr: bool,
}

impl GoComments {
    pub(super) fn byte(&mut self, byte: u8, reader: &mut Reader) {
        use GoState::*;
        let in_comment = matches!(self.state, LineComment | Block | BlockStar);
        if byte == b'\r' && in_comment {
            // go strips carriage returns from comments (cgo's text has none)...
            self.held_cr |= self.state == BlockStar;
            return;
        }
        if std::mem::take(&mut self.held_cr) && self.state == BlockStar && byte == b'/' {
            // ... but for `*\r/`, which to go ends nothing: the comment goes on.
            self.text(b'*', reader);
            self.text(b'\r', reader);
            self.state = Block;
        }
        self.state = match (self.state, byte) {
            (Slash, b'/' | b'*') => {
                // A comment starts: a new group unless the last comment was just before.
                if !matches!(self.since_comment, Some(0 | 1)) {
                    self.end_group(reader);
                }
                self.since_comment = None;
                if byte == b'/' { LineComment } else { Block }
            }
            (Slash, _) => {
                self.since_comment = None;
                self.state = Code;
                return self.byte(byte, reader);
            }
            (Code, b'/') => Slash,
            (Code, b'\n') => {
                self.since_comment = self.since_comment.map(|lines| lines + 1);
                Code
            }
            (Code, b' ' | b'\t' | b'\r') => Code,
            (Code, other) => {
                self.since_comment = None;
                match other {
                    b'"' => Str(false),
                    b'\'' => Rune(false),
                    b'`' => Raw,
                    _ => Code,
                }
            }
            (LineComment, b'\n') => {
                self.text(b'\n', reader);
                self.since_comment = Some(1);
                Code
            }
            (LineComment, _) => {
                self.text(byte, reader);
                LineComment
            }
            (Block, b'*') => BlockStar,
            (Block, _) => {
                self.text(byte, reader);
                Block
            }
            (BlockStar, b'/') => {
                self.since_comment = Some(0);
                Code
            }
            (BlockStar, _) => {
                self.text(b'*', reader);
                self.state = Block;
                return self.byte(byte, reader);
            }
            (Str(false), b'\\') => Str(true),
            (Str(false), b'"' | b'\n') => Code,
            (Str(_), _) => Str(false),
            (Rune(false), b'\\') => Rune(true),
            (Rune(false), b'\'' | b'\n') => Code,
            (Rune(_), _) => Rune(false),
            (Raw, b'`') => Code,
            (Raw, _) => Raw,
        };
    }

    /// The file is over: its last group too.
    pub(super) fn finish(&mut self, reader: &mut Reader) {
        self.end_group(reader);
    }

    fn text(&mut self, byte: u8, reader: &mut Reader) {
        if self.group.len() < MAX_GROUP {
            self.group.push(byte);
        } else {
            self.group_cut = true;
        }
        reader.byte(byte);
    }

    /// Ends a group of comments: its `#cgo` lines, and a fresh start for the C reader.
    fn end_group(&mut self, reader: &mut Reader) {
        let group = std::mem::take(&mut self.group);
        if std::mem::take(&mut self.group_cut) {
            reader.ambiguous_text(
                "a group of comments longer than 1 MiB, whose #cgo lines the scan does not read",
            );
        }
        for line in String::from_utf8_lossy(&group).lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("#cgo") else { continue };
            if rest.starts_with([' ', '\t']) {
                reader.cgo(rest.trim().to_owned());
            }
        }
        reader.end_text();
    }
}

/// The directives a logical line holds: a preprocessor or SWIG directive at its start (or the
/// `__has_include`s of an `#if`), and the assembler's `.incbin` and `.include` anywhere in
/// it (after a label or `;`, or in a C string of inline assembly).
fn directives(line: &[u8], fortran: bool) -> Vec<Directive> {
    let text = String::from_utf8_lossy(line);
    // A byte order mark starts a file's first line, and `??=` is the trigraph of `#` (on with
    // -std=c99 and the like): either way the line may be a directive to the compiler. SWIG
    // passes what `%{` opens to the C compiler as it is.
    let text = text.trim_start_matches(LEADING_BLANKS).replace("??=", "#");
    let text = text.strip_prefix("%{").map_or(text.as_str(), str::trim_start);
    let mut found = assembler_directives(text);
    if let Some(rest) = text.strip_prefix('#').or_else(|| text.strip_prefix("%:")) {
        let (word, condition) = split_word(rest.trim_start());
        if matches!(word, "if" | "elif") {
            found.extend(has_includes(condition));
            return found;
        }
    }
    found.extend(directive(text, fortran));
    found
}

/// The files `__has_include` and `__has_include_next` ask about in a condition: whether one
/// exists changes what the compiler reads, so each is found (and keyed) like an include.
fn has_includes(condition: &str) -> Vec<Directive> {
    let mut found = Vec::new();
    for ask in ["__has_include", "__has_embed"] {
        let mut rest = condition;
        while let Some(at) = rest.find(ask) {
            let after = rest[at + ask.len()..].strip_prefix("_next").unwrap_or(&rest[at + ask.len()..]);
            rest = after;
            // `defined(__has_include)` and `#ifdef __has_include` ask about the feature only.
            let Some(operand) = after.trim_start().strip_prefix('(') else { continue };
            let operand = operand.trim_start();
            let name = between(operand, '<', '>').map(Ok).or_else(|| quoted(operand, b'"').map(Err));
            found.push(match (ask, name) {
                (_, None) => computed(ask, operand),
                // C23's __has_embed asks whether the file is there and empty: data.
                ("__has_embed", Some(Ok(name) | Err(name))) => Directive::Incbin(name),
                (_, Some(Ok(name))) => Directive::System(name),
                (_, Some(Err(name))) => Directive::Include(name),
            });
        }
    }
    found
}

/// The preprocessor, SWIG or Fortran directive a line starts with, if any.
fn directive(text: &str, fortran: bool) -> Option<Directive> {
    // `%:` is the digraph of `#`, on in C by default.
    let (word, operand) = if let Some(rest) = text.strip_prefix('#').or_else(|| text.strip_prefix("%:")) {
        split_word(rest.trim_start())
    } else if let Some(rest) = text.strip_prefix('%') {
        split_word(rest)
    } else if fortran {
        let (word, operand) = split_word(text);
        let name = quoted(operand, b'\'').or_else(|| quoted(operand, b'"'));
        return name.filter(|_| word.eq_ignore_ascii_case("include")).map(Directive::Include);
    } else {
        return None;
    };
    if !matches!(word, "include" | "include_next" | "import" | "embed") {
        return None;
    }
    if operand.is_empty() {
        return None; // Nothing for the compiler to read.
    }
    if word == "embed" {
        // C23: data, found like an include.
        let name = between(operand, '<', '>').or_else(|| quoted(operand, b'"'));
        return Some(name.map_or_else(|| computed(word, operand), Directive::Incbin));
    }
    if let Some(name) = between(operand, '<', '>') {
        return Some(Directive::System(name));
    }
    Some(quoted(operand, b'"').map_or_else(|| computed(word, operand), Directive::Include))
}

/// Every `.incbin` and `.include` of the assembler in a line: statements may follow a label
/// or a `;`, and C's inline assembly holds them in strings (`".incbin \"f\""`). One whose
/// file is not a plain quoted name (a macro argument, a string pasted together) gives no key.
fn assembler_directives(text: &str) -> Vec<Directive> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices('.') {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let (word, _) = split_word(&text[at + 1..]);
        let data = match word {
            "incbin" => true,
            "include" => false,
            _ => continue,
        };
        let operand = &text[at + 1 + word.len()..];
        found.push(match assembler_operand(operand) {
            Some(name) if data => Directive::Incbin(name),
            Some(name) => Directive::Include(name),
            None => Directive::Computed(format!(".{word}{}", operand.trim_end())),
        });
    }
    found
}

/// The file an `.incbin` or `.include` names: `"name"`, or `\"name\"` in a C string, after
/// blanks or the escapes `\t` and `\n` a C string writes them as.
fn assembler_operand(operand: &str) -> Option<String> {
    let mut rest = operand;
    loop {
        let trimmed = rest.trim_start_matches([' ', '\t']);
        match trimmed.strip_prefix("\\t").or_else(|| trimmed.strip_prefix("\\n")) {
            Some(after) => rest = after,
            None => {
                rest = trimmed;
                break;
            }
        }
    }
    let name = match rest.strip_prefix("\\\"") {
        Some(inner) => inner.find("\\\"").map(|end| &inner[..end]),
        None => quoted(rest, b'"').map(|name| &rest[1..=name.len()]),
    }?;
    (!name.is_empty() && !name.contains(['\\', '"'])).then(|| name.to_owned())
}

fn computed(word: &str, operand: &str) -> Directive {
    Directive::Computed(format!("{word} {}", operand.trim_end()))
}

/// The identifier a directive starts with, and the rest after blanks.
fn split_word(text: &str) -> (&str, &str) {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
    (&text[..end], text[end..].trim_start())
}

/// The text between `quote` and the next one at the start of `operand`. A name that is not
/// UTF-8 keeps the replacement characters, so that it gives no key rather than passing for a
/// system header that was not found.
fn quoted(operand: &str, quote: u8) -> Option<String> {
    between(operand, quote as char, quote as char)
}

fn between(operand: &str, open: char, close: char) -> Option<String> {
    let rest = operand.strip_prefix(open)?;
    Some(rest[..rest.find(close)?].to_owned())
}
