//! Rewriting images inside Kubernetes YAML by splicing into the original text, so everything not rewritten stays byte-for-byte as the vendor wrote it.
//!
//! The stream is parsed with `saphyr-parser` into a small tree whose nodes carry
//! their source spans; edits are then computed against that tree and applied to the
//! untouched input. A serde round trip would lose comments, quoting and key order.
//!
//! Aliases and `<<` merge keys are followed as Kubernetes reads them, and an image reached
//! through one is rewritten at its anchor. What cannot be rewritten faithfully (a key
//! written twice, an image that would become an invalid reference) is refused with an
//! error naming the line, never skipped: no output is better than a silently wrong one.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};

use super::admission::AdmissionContext;
use super::workload::{is_list_kind, pod_spec_path, CONTAINER_KEYS, FALLBACK_POD_SPEC_PATH};
use super::{Decision, Rules};
use crate::oci::reference::{validate_digest, ImageRef};

/// Deeper nesting than any manifest has; guards the recursive tree builder.
const MAX_DEPTH: usize = 256;
/// Re-indentations for the parser (see [`repair`]) before a file is given up on.
const MAX_REPAIRS: usize = 1000;

/// Why a YAML stream could not be rewritten. No output is produced in that case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("invalid YAML at line {line}, column {column}: {message}")]
    Yaml {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("cannot pin {image} (line {line}) to a digest: {reason}")]
    Pin {
        image: String,
        line: usize,
        reason: String,
    },
    #[error("cannot rewrite at line {line}, column {column}: {reason}")]
    Unsupported {
        line: usize,
        column: usize,
        reason: String,
    },
}

/// The digest resolver behind `--pin-digests`: upstream image → `sha256:...`.
pub type PinFn<'a> = dyn Fn(&ImageRef) -> Result<String, String> + 'a;

/// Rewrites every container image of every workload in `input` (one or many YAML
/// documents) and adds `rules.pull_secret` to the pod specs whose images now point at
/// the target. `pin`, when given, maps an upstream image to its digest
/// (`sha256:...`), which is appended to the rewritten reference (`name:tag@digest`);
/// images that already carry a digest are not pinned again.
pub fn rewrite_yaml(
    rules: &Rules,
    input: &str,
    pin: Option<&PinFn<'_>>,
) -> Result<String, RewriteError> {
    rewrite_yaml_for(&|_| Some(rules.clone()), "default", input, pin)
}

/// [`rewrite_yaml`] with the rules chosen per object, as the admission webhook chooses
/// them: `rules_for` gets each workload's namespace (`metadata.namespace`, else
/// `namespace`, where `kubectl apply` would put it), kind, name and labels, and `None`
/// leaves that object as it is.
pub fn rewrite_yaml_for(
    rules_for: &dyn Fn(&AdmissionContext) -> Option<Rules>,
    namespace: &str,
    input: &str,
    pin: Option<&PinFn<'_>>,
) -> Result<String, RewriteError> {
    let src = parse_leniently(input)?;
    let docs = parse(&src)?;
    let mut ctx = Ctx {
        rules_for,
        namespace,
        pin,
        src: &src,
        json: is_json(input),
        edits: Vec::new(),
        seen_objects: HashSet::new(),
        seen_specs: HashSet::new(),
    };
    for doc in &docs {
        ctx.object(doc, 0)?;
    }
    ctx.apply()
}

/// A file that is JSON (its first character opens an object or array) gets its
/// additions in JSON syntax: quoted keys and strings, so the output is still JSON.
fn is_json(input: &str) -> bool {
    matches!(
        input
            .trim_start_matches('\u{feff}')
            .trim_start()
            .as_bytes()
            .first(),
        Some(b'{' | b'[')
    )
}

/// What becomes of one image: the one decision the YAML rewriter and
/// `berth rewrite --image` share.
pub(crate) enum Target {
    /// Not ours: unchanged, no pull secret.
    Foreign,
    /// Unchanged, but pulled from the target (its pod spec gets the secret).
    Ours,
    /// Rewritten (and pinned, when asked) to this.
    New(String),
}

pub(crate) enum TargetError {
    Unrewritable(String),
    Pin(String),
}

impl TargetError {
    pub(crate) fn reason(self) -> String {
        match self {
            TargetError::Unrewritable(r) => r,
            TargetError::Pin(r) => format!("cannot pin to a digest: {r}"),
        }
    }
}

pub(crate) fn target(
    rules: &Rules,
    image: &str,
    pin: Option<&PinFn<'_>>,
) -> Result<Target, TargetError> {
    let (mut new, upstream) = match rules.decide(image) {
        Decision::Foreign => return Ok(Target::Foreign),
        Decision::AlreadyTargeted => return Ok(Target::Ours),
        // berth's own name stays as written; only a pin adds to it.
        Decision::Own { pin: p } if pin.is_some() && p.digest.is_none() => (image.to_string(), p),
        Decision::Own { .. } => return Ok(Target::Ours),
        Decision::Rewrite { new, upstream } => (new, upstream),
        Decision::Unrewritable { reason } => {
            return Err(TargetError::Unrewritable(format!(
                "image {image:?}: {reason}"
            )))
        }
    };
    if let (Some(pin), None) = (pin, &upstream.digest) {
        let digest = pin(&upstream)
            .and_then(|d| validate_digest(&d).map(|()| d).map_err(|e| e.to_string()))
            .map_err(TargetError::Pin)?;
        new.push('@');
        new.push_str(&digest);
    }
    Ok(Target::New(new))
}

struct Source<'a> {
    text: &'a str,
    /// What the parser reads: `text` with spaces put in front of lines that are
    /// indented less than the YAML spec wants but as libyaml (and so go-yaml and
    /// `kubectl`) reads them (see [`repair`]); `text` itself when there are none.
    parsed: String,
    /// Byte offset in `parsed` of each char index (the parser counts chars); empty for ASCII.
    char_to_byte: Vec<usize>,
    /// The spaces in `parsed` that `text` does not have, in order.
    pads: Vec<Pad>,
    newline: &'static str,
}

/// `n` spaces at byte `at` of the original text, at byte `parsed_at` of the parsed one.
#[derive(Debug, Clone, Copy)]
struct Pad {
    at: usize,
    parsed_at: usize,
    n: usize,
}

/// Parses `input` as libyaml does where the YAML spec is stricter than libyaml about
/// indentation, so that what `kubectl apply` accepts is accepted here: continuation lines
/// of a quoted scalar (`description: 'a long` + a line indented less than the key, or
/// starting with a tab) and lines inside a flow collection (`args: [a,` + `b]` under the
/// key). In both places leading white space means nothing (a quoted scalar folds it away,
/// a flow collection ignores it), so the parser is given those lines indented further; the
/// output is spliced into `input` itself, which keeps them as written.
fn parse_leniently(input: &str) -> Result<Source<'_>, RewriteError> {
    let mut pads: Vec<(usize, usize)> = Vec::new();
    let mut repairs = 0;
    loop {
        let src = Source::with_pads(input, &pads);
        let Some(e) = scan(&src) else {
            return Ok(src);
        };
        repairs += 1;
        match repair(&src, &e) {
            // Each repair moves the error further on; one that does not (the same line
            // again) ends at the bound with the error it could not mend.
            Some(more) if repairs <= MAX_REPAIRS && !more.is_empty() => {
                for (at, n) in more {
                    match pads.iter_mut().find(|(a, _)| *a == at) {
                        Some(p) => p.1 += n,
                        None => pads.push((at, n)),
                    }
                }
                pads.sort_unstable();
            }
            _ => return Err(src.scan_error(&e)),
        }
    }
}

/// The first scan error of the parsed text, if any.
fn scan(src: &Source<'_>) -> Option<ScanError> {
    let mut parser = Parser::new_from_str(&src.parsed);
    loop {
        match parser.next_event() {
            None | Some(Ok((Event::StreamEnd, _))) => return None,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Some(e),
        }
    }
}

/// The spaces (original byte offset, count) that make the parser read the text around
/// `e` as libyaml does, when `e` is one of the indentation errors libyaml does not make.
fn repair(src: &Source<'_>, e: &ScanError) -> Option<Vec<(usize, usize)>> {
    let p = src.parsed.as_str();
    let at = src.parsed_byte(e.marker().index());
    let line_start = p[..at].rfind('\n').map_or(0, |i| i + 1);
    match e.info() {
        // At the opening quote: every continuation line goes at least as far right as
        // the quote, which is right of any indentation the scalar's parents have.
        "invalid indentation in quoted scalar" => {
            let quote = *p.as_bytes().get(at)?;
            let end = quoted_end(p, at, quote)?;
            let col = p[line_start..at].chars().count();
            let mut pads = Vec::new();
            let mut i = at;
            while let Some(nl) = p[i..end].find('\n') {
                let ls = i + nl + 1;
                let line = &p[ls..end.max(ls)];
                let line = &line[..line.find('\n').unwrap_or(line.len())];
                let spaces = line.len() - line.trim_start_matches(' ').len();
                // A document marker ends the document for libyaml too: left to fail.
                let marker = spaces == 0 && (line.starts_with("---") || line.starts_with("..."));
                if !line.trim().is_empty() && spaces < col && !marker {
                    pads.push((src.original_byte(ls), col - spaces));
                }
                i = ls;
            }
            Some(pads)
        }
        // At the offending line (a tab in a quoted scalar's continuation, a token in a
        // flow collection left of the block indentation): that line goes right of every
        // column used so far, so of any indentation in force.
        "tab cannot be used as indentation"
        | "invalid indentation"
        | "invalid indentation in flow construct" => {
            if !p[line_start..at].bytes().all(|b| b == b' ' || b == b'\t') {
                return None;
            }
            // Block indentation is set on lines never padded (padding happens inside
            // quoted scalars and flow collections only), so the widest line as written
            // bounds it, and every padded line gets the same.
            let at = src.original_byte(line_start);
            let widest = src.text[..at]
                .split('\n')
                .map(|l| l.chars().count())
                .max()
                .unwrap_or(0);
            Some(vec![(at, widest + 1)])
        }
        _ => None,
    }
}

/// The byte after the closing quote of the quoted scalar opening at `pos` of `text`.
fn quoted_end(text: &str, pos: usize, q: u8) -> Option<usize> {
    let b = text.as_bytes();
    if b.get(pos) != Some(&q) || !matches!(q, b'\'' | b'"') {
        return None;
    }
    let mut i = pos + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if q == b'"' => i += 2,
            b'\'' if q == b'\'' && b.get(i + 1) == Some(&b'\'') => i += 2,
            c if c == q => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

impl<'a> Source<'a> {
    fn with_pads(text: &'a str, pads: &[(usize, usize)]) -> Self {
        let mut parsed =
            String::with_capacity(text.len() + pads.iter().map(|p| p.1).sum::<usize>());
        let mut placed = Vec::with_capacity(pads.len());
        let mut pos = 0;
        for &(at, n) in pads {
            parsed.push_str(&text[pos..at]);
            placed.push(Pad {
                at,
                parsed_at: parsed.len(),
                n,
            });
            parsed.extend(std::iter::repeat_n(' ', n));
            pos = at;
        }
        parsed.push_str(&text[pos..]);
        let char_to_byte = if parsed.is_ascii() {
            Vec::new()
        } else {
            parsed
                .char_indices()
                .map(|(i, _)| i)
                .chain(std::iter::once(parsed.len()))
                .collect()
        };
        let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
        Source {
            text,
            parsed,
            char_to_byte,
            pads: placed,
            newline,
        }
    }

    /// Byte offset in `parsed` of the parser's char index.
    fn parsed_byte(&self, char_index: usize) -> usize {
        if self.char_to_byte.is_empty() {
            char_index.min(self.parsed.len())
        } else {
            self.char_to_byte
                .get(char_index)
                .copied()
                .unwrap_or(self.parsed.len())
        }
    }

    /// Byte offset in `text` of byte `b` of `parsed` (a position inside added spaces is
    /// where they were added).
    fn original_byte(&self, b: usize) -> usize {
        let i = self.pads.partition_point(|p| p.parsed_at <= b);
        let Some(pad) = i.checked_sub(1).map(|i| self.pads[i]) else {
            return b.min(self.text.len());
        };
        let before: usize = self.pads[..i].iter().map(|p| p.n).sum();
        if b < pad.parsed_at + pad.n {
            pad.at
        } else {
            (b - before).min(self.text.len())
        }
    }

    /// A scan error at its place in `text`; one reported at a quoted scalar's opening
    /// quote points at the line at fault when that is another.
    fn scan_error(&self, e: &ScanError) -> RewriteError {
        let at = self.original_byte(self.parsed_byte(e.marker().index()));
        let mut message = e.info().to_string();
        let mut pos = at;
        if message.contains("found unexpected document indicator") {
            if let Some(i) = self.text[at..]
                .match_indices('\n')
                .map(|(i, _)| at + i + 1)
                .find(|&ls| {
                    let l = &self.text[ls..];
                    l.starts_with("---") || l.starts_with("...")
                })
            {
                message = format!(
                    "a document marker inside the quoted scalar opened at line {}",
                    self.line(at)
                );
                pos = i;
            }
        } else if message.contains("found unexpected end of stream") {
            message = "this quoted scalar is never closed".into();
        }
        RewriteError::Yaml {
            line: self.line(pos),
            column: self.column(pos) + 1,
            message,
        }
    }

    /// Line (1-based) of byte offset `pos`.
    fn line(&self, pos: usize) -> usize {
        self.text[..pos.min(self.text.len())].matches('\n').count() + 1
    }

    /// Skips an anchor (`&a`) and tag (`!!str`) in front of a node: the parser's
    /// span starts at them, the content follows.
    fn content_start(&self, mut pos: usize) -> usize {
        let b = self.text.as_bytes();
        while let Some(&sigil @ (b'&' | b'!')) = b.get(pos) {
            pos += 1;
            // An anchor name ends at a flow indicator too (`&a{...}`); a tag may hold
            // commas (`!<tag:yaml.org,2002:str>`).
            let ends = |c: &u8| c.is_ascii_whitespace() || (sigil == b'&' && b",[]{}".contains(c));
            while matches!(b.get(pos), Some(c) if !ends(c)) {
                pos += 1;
            }
            while matches!(b.get(pos), Some(c) if c.is_ascii_whitespace()) {
                pos += 1;
            }
        }
        pos.min(b.len())
    }

    /// The name of the anchor (`&name`) or alias (`*name`) written in `start..end`,
    /// when it is not made of letters, digits, `-` and `_` only. YAML allows more
    /// (`&a:b`), but libyaml and go-yaml, which Kubernetes uses, read only those: the
    /// rest of such a name would be content to them, and the document means something
    /// else.
    fn odd_name(&self, start: usize, end: usize, sigil: u8) -> Option<&'a str> {
        let b = self.text.as_bytes();
        let at = (start..end.min(b.len()))
            .find(|&i| b[i] == sigil && (i == start || b[i - 1].is_ascii_whitespace()))?;
        let name_end = (at + 1..b.len())
            .find(|&i| b[i].is_ascii_whitespace() || b",[]{}".contains(&b[i]))
            .unwrap_or(b.len());
        let name = self.text.get(at + 1..name_end)?;
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        (!plain).then_some(name)
    }

    /// The byte after the closing quote of the quoted scalar opening at `pos`.
    fn quoted_end(&self, pos: usize, style: ScalarStyle) -> Option<usize> {
        match style {
            ScalarStyle::SingleQuoted => quoted_end(self.text, pos, b'\''),
            ScalarStyle::DoubleQuoted => quoted_end(self.text, pos, b'"'),
            _ => None,
        }
    }

    /// The byte after the closer (`]` or `}`) of a flow collection whose end event the
    /// parser placed at `end`. After a trailing comma (`{name: x,}`) the parser puts a
    /// flow mapping's end on the comma, not on the `}`; an item appended there would land
    /// inside the mapping and make the output invalid.
    fn flow_end(&self, end: usize, closer: u8) -> usize {
        let b = self.text.as_bytes();
        if end > 0 && b.get(end - 1) == Some(&closer) {
            return end;
        }
        let mut i = end;
        while let Some(&c) = b.get(i) {
            match c {
                b' ' | b'\t' | b'\r' | b'\n' | b',' => i += 1,
                b'#' => {
                    while matches!(b.get(i), Some(c) if *c != b'\n') {
                        i += 1;
                    }
                }
                c if c == closer => return i + 1,
                _ => break,
            }
        }
        end
    }

    /// The `-` of the first item of the block sequence `seq`. A sequence indented under
    /// its key starts at that dash; an indentless one at its first item, after the dash
    /// (and that item may itself be a `- ` sequence, or carry an anchor or tag); an
    /// anchored or tagged sequence at its anchor.
    fn block_seq_dash(&self, seq: &Node) -> usize {
        let b = self.text.as_bytes();
        let first = match &seq.kind {
            Kind::Seq { items, .. } => items.first().map(|i| i.start),
            _ => None,
        };
        if b.get(seq.start) == Some(&b'-') && first != Some(seq.start) {
            return seq.start;
        }
        if let Some(dash) = self.dash_before(seq.start) {
            return dash;
        }
        let content = self.content_start(seq.start);
        if b.get(content) == Some(&b'-') {
            return content;
        }
        self.dash_before(content).unwrap_or(content)
    }

    /// The dash in front of `pos` with only blanks and comments between (the item may
    /// be lines below its dash when a comment follows it: `- # note`).
    fn dash_before(&self, pos: usize) -> Option<usize> {
        let b = self.text.as_bytes();
        let mut i = pos.min(b.len());
        loop {
            let start = self.text[..i].rfind('\n').map_or(0, |n| n + 1);
            let line = &b[start..i];
            let code = (0..line.len())
                .find(|&k| line[k] == b'#' && (k == 0 || matches!(line[k - 1], b' ' | b'\t')))
                .unwrap_or(line.len());
            i = start + code;
            while i > start && matches!(b[i - 1], b' ' | b'\t' | b'\r') {
                i -= 1;
            }
            if i > start && b[i - 1] == b'-' {
                return Some(i - 1);
            }
            if i > start || start == 0 {
                return None;
            }
            i = start - 1;
        }
    }

    /// Column (in chars) of byte offset `pos`.
    fn column(&self, pos: usize) -> usize {
        let line_start = self.text[..pos].rfind('\n').map_or(0, |i| i + 1);
        self.text[line_start..pos].chars().count()
    }

    /// Byte offset in `text` of the parser's char index.
    fn byte(&self, char_index: usize) -> usize {
        self.original_byte(self.parsed_byte(char_index))
    }
}

#[derive(Debug)]
struct Node {
    start: usize,
    end: usize,
    line: usize,
    col: usize,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Scalar {
        value: String,
        style: ScalarStyle,
    },
    Seq {
        flow: bool,
        items: Vec<Rc<Node>>,
    },
    Map {
        flow: bool,
        entries: Vec<(Rc<Node>, Rc<Node>)>,
    },
    /// `*name`: the node it stands for. Edits through an alias land on the anchored
    /// node's text, so every use of that anchor sees them (as YAML means it to).
    Alias(Rc<Node>),
}

/// A key and its value as written (the value may be an alias).
type Entry<'n> = (&'n Node, &'n Node);

impl Node {
    /// The node itself, or the anchored node an alias stands for.
    fn resolve(&self) -> &Node {
        match &self.kind {
            Kind::Alias(target) => target,
            _ => self,
        }
    }

    fn unsupported(&self, reason: impl Into<String>) -> RewriteError {
        RewriteError::Unsupported {
            line: self.line,
            column: self.col + 1,
            reason: reason.into(),
        }
    }

    /// The entry for `key` in this mapping, as Kubernetes reads it: through aliases and
    /// `<<` merge keys (the mapping's own keys win over merged ones, earlier merged
    /// mappings over later ones). A key written twice is refused rather than guessed
    /// at: parsers disagree on which one counts (Kubernetes' strict decoding rejects it).
    fn entry(&self, key: &str) -> Result<Option<Entry<'_>>, RewriteError> {
        self.entry_in(key, &mut HashSet::new())
    }

    fn entry_in<'n>(
        &'n self,
        key: &str,
        seen: &mut HashSet<usize>,
    ) -> Result<Option<Entry<'n>>, RewriteError> {
        let map = self.resolve();
        // Each mapping is searched once per lookup, so chains of merges cannot blow up.
        if !seen.insert(std::ptr::from_ref(map) as usize) {
            return Ok(None);
        }
        let Kind::Map { entries, .. } = &map.kind else {
            return Ok(None);
        };
        let mut found: Option<Entry<'n>> = None;
        for (k, v) in entries {
            if k.resolve().str() != Some(key) {
                continue;
            }
            if let Some((first, _)) = found {
                return Err(k.unsupported(format!(
                    "duplicate key {key:?} (first on line {})",
                    first.line
                )));
            }
            found = Some((k, v));
        }
        if found.is_some() {
            return Ok(found);
        }
        for (k, v) in entries {
            if !k.resolve().is_merge_key() {
                continue;
            }
            let sources: Vec<&Node> = match &v.resolve().kind {
                Kind::Map { .. } => vec![v.resolve()],
                Kind::Seq { items, .. } => items.iter().map(|i| i.resolve()).collect(),
                _ => {
                    return Err(
                        k.unsupported("merge key `<<` needs a mapping or a list of mappings")
                    )
                }
            };
            for source in sources {
                if !matches!(source.kind, Kind::Map { .. }) {
                    return Err(
                        k.unsupported("merge key `<<` needs a mapping or a list of mappings")
                    );
                }
                if let Some(e) = source.entry_in(key, seen)? {
                    return Ok(Some(e));
                }
            }
        }
        Ok(None)
    }

    /// The (resolved) value under `key`.
    fn get(&self, key: &str) -> Result<Option<&Node>, RewriteError> {
        Ok(self.entry(key)?.map(|(_, v)| v.resolve()))
    }

    fn path(&self, path: &[&str]) -> Result<Option<&Node>, RewriteError> {
        let mut n = self.resolve();
        for k in path {
            match n.get(k)? {
                Some(next) => n = next,
                None => return Ok(None),
            }
        }
        Ok(Some(n))
    }

    fn str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// `<<` written plainly; a quoted `"<<"` is an ordinary key.
    fn is_merge_key(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { value, style: ScalarStyle::Plain } if value == "<<")
    }

    fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { value, style: ScalarStyle::Plain }
            if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    fn is_map(&self) -> bool {
        matches!(self.kind, Kind::Map { .. })
    }

    fn items(&self) -> Option<&[Rc<Node>]> {
        match &self.kind {
            Kind::Seq { items, .. } => Some(items),
            _ => None,
        }
    }
}

fn parse(src: &Source<'_>) -> Result<Vec<Rc<Node>>, RewriteError> {
    let mut b = Builder {
        parser: Parser::new_from_str(&src.parsed),
        src,
        anchors: HashMap::new(),
    };
    let mut docs = Vec::new();
    loop {
        let (ev, sp) = b.next()?;
        match ev {
            Event::StreamStart | Event::DocumentEnd => {}
            // Anchors do not cross documents.
            Event::DocumentStart(_) => b.anchors.clear(),
            Event::StreamEnd => return Ok(docs),
            ev => docs.push(b.node(ev, sp, 0)?),
        }
    }
}

struct Builder<'a, 'b> {
    parser: Parser<'b, saphyr_parser::StrInput<'b>>,
    src: &'b Source<'a>,
    /// Completed anchored nodes by the parser's anchor id.
    anchors: HashMap<usize, Rc<Node>>,
}

impl<'b> Builder<'_, 'b> {
    fn next(&mut self) -> Result<(Event<'b>, Span), RewriteError> {
        match self.parser.next_event() {
            Some(Ok(x)) => Ok(x),
            Some(Err(e)) => Err(self.src.scan_error(&e)),
            None => Ok((Event::StreamEnd, Span::default())),
        }
    }

    fn node(&mut self, ev: Event<'b>, sp: Span, depth: usize) -> Result<Rc<Node>, RewriteError> {
        let start = self.src.byte(sp.start.index());
        let mut node = Node {
            start,
            end: self.src.byte(sp.end.index()),
            line: sp.start.line(),
            col: self.src.column(start),
            kind: Kind::Scalar {
                value: String::new(),
                style: ScalarStyle::Plain,
            },
        };
        if depth > MAX_DEPTH {
            return Err(RewriteError::Yaml {
                line: node.line,
                column: node.col + 1,
                message: "nesting too deep".into(),
            });
        }
        let content = self.src.content_start(start);
        let odd = match ev {
            Event::Alias(_) => self.src.odd_name(start, start + 1, b'*'),
            Event::Scalar(_, _, id, _)
            | Event::SequenceStart(id, _)
            | Event::MappingStart(id, _)
                if id > 0 =>
            {
                self.src.odd_name(start, content, b'&')
            }
            _ => None,
        };
        if let Some(name) = odd {
            return Err(node.unsupported(format!(
                "anchor or alias name {name:?}: Kubernetes' YAML parser reads only letters, \
                 digits, '-' and '_' in these names, so it would read this document differently"
            )));
        }
        let opens = |c: u8| self.src.text.as_bytes().get(content) == Some(&c);
        let anchor;
        node.kind = match ev {
            Event::Scalar(value, style, id, _) => {
                anchor = id;
                // The parser's span for a quoted scalar can run on over a trailing
                // comment; the closing quote is the real end.
                if let Some(end) = self.src.quoted_end(content, style) {
                    node.end = end;
                }
                Kind::Scalar {
                    value: value.into_owned(),
                    style,
                }
            }
            Event::Alias(id) => {
                // An alias inside the node it names (`&a [*a]`) finds no completed
                // anchor (such a cycle has no finite value), nor does one naming an
                // anchor of an earlier document.
                let target = self.anchors.get(&id).cloned().ok_or_else(|| {
                    node.unsupported("alias to an anchor not completed earlier in this document")
                })?;
                return Ok(Rc::new(Node {
                    kind: Kind::Alias(target),
                    ..node
                }));
            }
            Event::SequenceStart(id, _) => {
                anchor = id;
                let flow = opens(b'[');
                let mut items = Vec::new();
                loop {
                    let (ev, sp) = self.next()?;
                    match ev {
                        Event::SequenceEnd => {
                            node.end = self.src.byte(sp.end.index());
                            if flow {
                                node.end = self.src.flow_end(node.end, b']');
                            }
                            break;
                        }
                        ev => items.push(self.node(ev, sp, depth + 1)?),
                    }
                }
                Kind::Seq { flow, items }
            }
            Event::MappingStart(id, _) => {
                anchor = id;
                let flow = opens(b'{');
                let mut entries = Vec::new();
                loop {
                    let (ev, sp) = self.next()?;
                    match ev {
                        Event::MappingEnd => {
                            node.end = self.src.byte(sp.end.index());
                            if flow {
                                node.end = self.src.flow_end(node.end, b'}');
                            }
                            break;
                        }
                        ev => {
                            let k = self.node(ev, sp, depth + 1)?;
                            let (ev, sp) = self.next()?;
                            let v = self.node(ev, sp, depth + 1)?;
                            entries.push((k, v));
                        }
                    }
                }
                Kind::Map { flow, entries }
            }
            other => {
                return Err(RewriteError::Yaml {
                    line: node.line,
                    column: node.col + 1,
                    message: format!("unexpected {other:?}"),
                })
            }
        };
        let node = Rc::new(node);
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

struct Edit {
    start: usize,
    end: usize,
    text: String,
}

struct Ctx<'r, 's> {
    rules_for: &'r dyn Fn(&AdmissionContext) -> Option<Rules>,
    /// Where an object without `metadata.namespace` goes.
    namespace: &'r str,
    pin: Option<&'r PinFn<'r>>,
    src: &'s Source<'s>,
    /// The input is JSON: additions are written as JSON.
    json: bool,
    edits: Vec<Edit>,
    /// Objects, and pod specs, already handled: through aliases one node can be reached
    /// many times (and exponentially many in a hostile file), but is rewritten once.
    /// Two sets: one mapping may be both (`items: [*spec]` and `spec: *spec`).
    seen_objects: HashSet<usize>,
    seen_specs: HashSet<usize>,
}

fn id(node: &Node) -> usize {
    std::ptr::from_ref(node) as usize
}

impl Ctx<'_, '_> {
    fn object(&mut self, obj: &Node, depth: usize) -> Result<(), RewriteError> {
        let obj = obj.resolve();
        if !obj.is_map() || !self.seen_objects.insert(id(obj)) {
            return Ok(());
        }
        if depth > MAX_DEPTH {
            return Err(obj.unsupported("lists nested too deep"));
        }
        let kind = obj.get("kind")?.and_then(Node::str).unwrap_or("");
        if is_list_kind(kind) {
            if let Some(items) = obj.get("items")?.and_then(Node::items) {
                for item in items {
                    self.object(item, depth + 1)?;
                }
            }
            return Ok(());
        }
        let spec = match pod_spec_path(kind) {
            Some(path) => obj.path(path)?,
            None => match obj.path(FALLBACK_POD_SPEC_PATH)? {
                Some(s) if s.get("containers")?.and_then(Node::items).is_some() => Some(s),
                _ => None,
            },
        };
        let Some(spec) = spec.filter(|s| s.is_map()) else {
            return Ok(());
        };
        let Some(rules) = (self.rules_for)(&self.context(obj, kind)?) else {
            return Ok(());
        };
        if self.seen_specs.insert(id(spec)) {
            self.pod_spec(spec, &rules)?;
        }
        Ok(())
    }

    /// What the webhook would be told about this object if `kubectl apply` sent it.
    fn context(&self, obj: &Node, kind: &str) -> Result<AdmissionContext, RewriteError> {
        let meta = obj.get("metadata")?;
        let field = |k: &str| -> Result<Option<String>, RewriteError> {
            Ok(match meta {
                Some(m) => m.get(k)?.and_then(Node::str).map(str::to_string),
                None => None,
            })
        };
        let mut labels = std::collections::BTreeMap::new();
        if let Some(Kind::Map { entries, .. }) = meta
            .map(|m| m.get("labels"))
            .transpose()?
            .flatten()
            .map(|l| &l.kind)
        {
            for (k, v) in entries {
                if let (Some(k), Some(v)) = (k.resolve().str(), v.resolve().str()) {
                    labels.insert(k.to_string(), v.to_string());
                }
            }
        }
        Ok(AdmissionContext {
            namespace: field("namespace")?
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| self.namespace.to_string()),
            kind: kind.to_string(),
            operation: "CREATE".into(),
            name: field("name")?,
            labels,
        })
    }

    fn pod_spec(&mut self, spec: &Node, rules: &Rules) -> Result<(), RewriteError> {
        let mut targeted = false;
        for key in CONTAINER_KEYS {
            let Some(items) = spec.get(key)?.and_then(Node::items) else {
                continue;
            };
            for container in items {
                if let Some((_, image)) = container.resolve().entry("image")? {
                    targeted |= self.image(image, rules)?;
                }
            }
        }
        if targeted {
            if let Some(secret) = &rules.pull_secret {
                self.pull_secret(spec, secret)?;
            }
        }
        Ok(())
    }

    /// Rewrites one `image:` scalar (as written: an alias is rewritten at its anchor);
    /// true when the image now points at the target.
    fn image(&mut self, written: &Node, rules: &Rules) -> Result<bool, RewriteError> {
        let node = written.resolve();
        let Kind::Scalar { value, style } = &node.kind else {
            return Ok(false);
        };
        let new = match target(rules, value.trim(), self.pin) {
            Ok(Target::Foreign) => return Ok(false),
            Ok(Target::Ours) => return Ok(true),
            Ok(Target::New(new)) => new,
            Err(TargetError::Unrewritable(reason)) => return Err(written.unsupported(reason)),
            Err(TargetError::Pin(reason)) => {
                return Err(RewriteError::Pin {
                    image: value.clone(),
                    line: written.line,
                    reason,
                })
            }
        };
        let start = self.src.content_start(node.start).min(node.end);
        let original = &self.src.text[start..node.end.max(start)];
        // Check the span really is the scalar before overwriting it: a wrong
        // offset would silently corrupt the manifest.
        let (start, end, text) = match style {
            ScalarStyle::Plain if original == value => (start, node.end, new),
            ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => {
                let q = if *style == ScalarStyle::SingleQuoted {
                    '\''
                } else {
                    '"'
                };
                if original.len() < 2 || !original.starts_with(q) || !original.ends_with(q) {
                    return Err(
                        node.unsupported("quoted image does not end with its closing quote")
                    );
                }
                (start, node.end, format!("{q}{new}{q}"))
            }
            ScalarStyle::Plain => {
                return Err(
                    node.unsupported("plain image spans more than one line or holds a comment")
                )
            }
            ScalarStyle::Literal | ScalarStyle::Folded => {
                let (at, len) =
                    self.block_image(start, node.end, value.trim())
                        .ok_or_else(|| {
                            node.unsupported("block scalar image that is not one line of text")
                        })?;
                (at, at + len, new)
            }
        };
        self.edits.push(Edit { start, end, text });
        Ok(true)
    }

    /// Where the image of a block scalar (`image: >-` and the reference on the next line)
    /// is written: the one non-blank line of the scalar's content (the parser's span starts
    /// after the header), which must read `image` exactly. A reference has no spaces, so
    /// folding and chomping leave that line as it is, and replacing it (header,
    /// indentation and chomping kept) rewrites exactly the value.
    fn block_image(&self, start: usize, end: usize, image: &str) -> Option<(usize, usize)> {
        let text = self.src.text;
        // With an anchor or tag in front the span starts there, so at the header.
        let start = match text.as_bytes().get(start) {
            Some(b'|' | b'>') => start + text.get(start..end)?.find('\n')? + 1,
            _ => start,
        };
        let mut found = None;
        let mut ls = start;
        for line in text.get(start..end)?.split_inclusive('\n') {
            let content = line.trim();
            if !content.is_empty() {
                if found.is_some() || content != image {
                    return None;
                }
                found = Some(ls + line.find(content)?);
            }
            ls += line.len();
        }
        found.map(|at| (at, image.len()))
    }

    fn pull_secret(&mut self, spec: &Node, secret: &str) -> Result<(), RewriteError> {
        let Kind::Map { flow, entries } = &spec.kind else {
            return Ok(());
        };
        let (key, flow_item) = if self.json {
            let name = serde_json::Value::String(secret.to_string());
            ("\"imagePullSecrets\"", format!("{{\"name\": {name}}}"))
        } else {
            (
                "imagePullSecrets",
                format!("{{name: {}}}", yaml_plain_or_quoted(secret)),
            )
        };
        let entry = spec
            .entry("imagePullSecrets")?
            .map(|(k, v)| (k, v, v.resolve()));
        match entry {
            Some((
                _,
                _,
                list @ Node {
                    kind: Kind::Seq { flow, items },
                    ..
                },
            )) => {
                for item in items {
                    if item.resolve().get("name")?.and_then(Node::str) == Some(secret) {
                        return Ok(());
                    }
                }
                if *flow {
                    match items.last() {
                        Some(last) => self.insert(last.end, format!(", {flow_item}")),
                        None => self.insert(self.src.content_start(list.start) + 1, flow_item),
                    }
                } else {
                    let open = self.src.block_seq_dash(list);
                    let text = format!(
                        "- name: {}{}{}",
                        yaml_plain_or_quoted(secret),
                        self.src.newline,
                        " ".repeat(self.src.column(open))
                    );
                    self.insert(open, text);
                }
            }
            Some((key, written, value)) if value.is_null() => {
                let text = format!("[{flow_item}]");
                // An alias to a null is replaced where it is written; a null with an
                // anchor keeps the anchor (`&n ~` → `&n [...]`).
                let start = self.src.content_start(written.start).min(written.end);
                if written.end > start {
                    self.edits.push(Edit {
                        start,
                        end: written.end,
                        text,
                    });
                } else if written.end > written.start {
                    self.insert(written.end, format!(" {text}"));
                } else {
                    let colon = self.src.text[key.end..]
                        .find(':')
                        .map(|i| key.end + i + 1)
                        .ok_or_else(|| key.unsupported("imagePullSecrets without ':'"))?;
                    self.insert(colon, format!(" {text}"));
                }
            }
            // Anything else is not a valid pod spec; leave it for the API server to reject.
            Some(_) => {}
            None if *flow => match entries.first() {
                Some((k, _)) => self.insert(self.key_start(k).0, format!("{key}: [{flow_item}], ")),
                None => self.insert(
                    self.src.content_start(spec.start) + 1,
                    format!("{key}: [{flow_item}]"),
                ),
            },
            None => {
                let Some((first, _)) = entries.first() else {
                    return Ok(());
                };
                let (key_at, key_col) = self.key_start(first);
                let nl = self.src.newline;
                let pad = " ".repeat(key_col);
                let dash = format!(
                    "{}- name: {}",
                    " ".repeat(self.seq_indent(spec)),
                    yaml_plain_or_quoted(secret)
                );
                let at = self.line_insertion_point(key_at, key_col);
                let text = if at == key_at {
                    format!("imagePullSecrets:{nl}{pad}{dash}{nl}{pad}")
                } else {
                    format!("{pad}imagePullSecrets:{nl}{pad}{dash}{nl}")
                };
                self.insert(at, text);
            }
        }
        Ok(())
    }

    /// Where a new key goes in front of `first`: at the start of its line (and above
    /// any comment lines directly above it, which belong to that key) when nothing
    /// else precedes it on the line; otherwise (`- containers:`) right at the key.
    fn line_insertion_point(&self, first: usize, col: usize) -> usize {
        let text = self.src.text;
        let line_start = text[..first].rfind('\n').map_or(0, |i| i + 1);
        if !text[line_start..first].bytes().all(|b| b == b' ') {
            return first;
        }
        let mut at = line_start;
        while at > 0 {
            let prev_start = text[..at - 1].rfind('\n').map_or(0, |i| i + 1);
            let prev = text[prev_start..at - 1].trim_end_matches('\r');
            let indent = prev.len() - prev.trim_start_matches(' ').len();
            if indent == col && prev[indent..].starts_with('#') {
                at = prev_start;
            } else {
                break;
            }
        }
        at
    }

    /// Where key `k` begins as written, and its column: at its `?` when it is an
    /// explicit key (`? name`), or a new key put in front of it would become part of it.
    fn key_start(&self, k: &Node) -> (usize, usize) {
        let b = self.src.text.as_bytes();
        let mut i = k.start;
        while i > 0 && matches!(b[i - 1], b' ' | b'\t' | b'\r' | b'\n') {
            i -= 1;
        }
        if i > 0 && b[i - 1] == b'?' {
            (i - 1, self.src.column(i - 1))
        } else {
            (k.start, k.col)
        }
    }

    /// How far the sibling container lists indent their `-` past their key, so an
    /// added `imagePullSecrets` list looks like its neighbours (kubectl writes 0, most
    /// charts 2).
    fn seq_indent(&self, spec: &Node) -> usize {
        for key in CONTAINER_KEYS {
            if let Some((k, v)) = spec.entry(key).ok().flatten() {
                let v = v.resolve();
                if let Kind::Seq { flow: false, .. } = v.kind {
                    let dash = self.src.block_seq_dash(v);
                    return self.src.column(dash).saturating_sub(k.col);
                }
            }
        }
        2
    }

    fn insert(&mut self, at: usize, text: String) {
        self.edits.push(Edit {
            start: at,
            end: at,
            text,
        });
    }

    fn apply(mut self) -> Result<String, RewriteError> {
        // Two inserts at one offset keep the order they were made in.
        self.edits.sort_by_key(|e| (e.start, e.end));
        // The same node reached twice (one anchored image under two containers, one
        // merged `imagePullSecrets` under two pod specs) yields identical edits, which
        // are made once; only conflicting ones are an error.
        self.edits
            .dedup_by(|a, b| a.start == b.start && a.end == b.end && a.text == b.text);
        let text = self.src.text;
        let mut out = String::with_capacity(text.len() + 64 * self.edits.len());
        let mut pos = 0;
        for e in &self.edits {
            if e.start < pos
                || e.end < e.start
                || !text.is_char_boundary(e.start)
                || !text.is_char_boundary(e.end)
            {
                let at = e.start.min(text.len());
                let at = (0..=at)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                return Err(RewriteError::Unsupported {
                    line: text[..at].matches('\n').count() + 1,
                    column: self.src.column(at) + 1,
                    reason: "two changes overlap here (aliases or merge keys?)".into(),
                });
            }
            out.push_str(&text[pos..e.start]);
            out.push_str(&e.text);
            pos = e.end;
        }
        out.push_str(&text[pos..]);
        Ok(out)
    }
}

/// Secret names are DNS labels, safe as plain scalars; anything else is quoted.
fn yaml_plain_or_quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !matches!(
            s,
            "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
        )
        && s.parse::<f64>().is_err();
    if plain {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}
