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

use super::workload::{is_list_kind, pod_spec_path, CONTAINER_KEYS, FALLBACK_POD_SPEC_PATH};
use super::{Decision, Rules};
use crate::oci::reference::{validate_digest, ImageRef};

/// Deeper nesting than any manifest has; guards the recursive tree builder.
const MAX_DEPTH: usize = 256;

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
    let src = Source::new(input);
    let docs = parse(&src)?;
    let mut ctx = Ctx {
        rules,
        pin,
        src: &src,
        edits: Vec::new(),
        seen_objects: HashSet::new(),
        seen_specs: HashSet::new(),
    };
    for doc in &docs {
        ctx.object(doc, 0)?;
    }
    ctx.apply()
}

struct Source<'a> {
    text: &'a str,
    /// Byte offset of each char index (the parser counts chars); empty for ASCII.
    char_to_byte: Vec<usize>,
    newline: &'static str,
}

impl<'a> Source<'a> {
    fn new(text: &'a str) -> Self {
        let char_to_byte = if text.is_ascii() {
            Vec::new()
        } else {
            text.char_indices()
                .map(|(i, _)| i)
                .chain(std::iter::once(text.len()))
                .collect()
        };
        let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
        Source {
            text,
            char_to_byte,
            newline,
        }
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
        let b = self.text.as_bytes();
        let q = match style {
            ScalarStyle::SingleQuoted => b'\'',
            ScalarStyle::DoubleQuoted => b'"',
            _ => return None,
        };
        if b.get(pos) != Some(&q) {
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

    fn byte(&self, char_index: usize) -> usize {
        if self.char_to_byte.is_empty() {
            char_index.min(self.text.len())
        } else {
            self.char_to_byte
                .get(char_index)
                .copied()
                .unwrap_or(self.text.len())
        }
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

fn yaml_error(e: &ScanError) -> RewriteError {
    RewriteError::Yaml {
        line: e.marker().line(),
        column: e.marker().col() + 1,
        message: e.info().to_string(),
    }
}

fn parse(src: &Source<'_>) -> Result<Vec<Rc<Node>>, RewriteError> {
    let mut b = Builder {
        parser: Parser::new_from_str(src.text),
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
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    src: &'b Source<'a>,
    /// Completed anchored nodes by the parser's anchor id.
    anchors: HashMap<usize, Rc<Node>>,
}

impl<'a> Builder<'a, '_> {
    fn next(&mut self) -> Result<(Event<'a>, Span), RewriteError> {
        match self.parser.next_event() {
            Some(Ok(x)) => Ok(x),
            Some(Err(e)) => Err(yaml_error(&e)),
            None => Ok((Event::StreamEnd, Span::default())),
        }
    }

    fn node(&mut self, ev: Event<'a>, sp: Span, depth: usize) -> Result<Rc<Node>, RewriteError> {
        let start = self.src.byte(sp.start.index());
        let mut node = Node {
            start,
            end: self.src.byte(sp.end.index()),
            line: sp.start.line(),
            col: sp.start.col(),
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
    rules: &'r Rules,
    pin: Option<&'r PinFn<'r>>,
    src: &'s Source<'s>,
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
        match spec {
            Some(spec) if spec.is_map() && self.seen_specs.insert(id(spec)) => self.pod_spec(spec),
            _ => Ok(()),
        }
    }

    fn pod_spec(&mut self, spec: &Node) -> Result<(), RewriteError> {
        let mut targeted = false;
        for key in CONTAINER_KEYS {
            let Some(items) = spec.get(key)?.and_then(Node::items) else {
                continue;
            };
            for container in items {
                if let Some((_, image)) = container.resolve().entry("image")? {
                    targeted |= self.image(image)?;
                }
            }
        }
        if targeted {
            if let Some(secret) = &self.rules.pull_secret {
                self.pull_secret(spec, secret)?;
            }
        }
        Ok(())
    }

    /// Rewrites one `image:` scalar (as written: an alias is rewritten at its anchor);
    /// true when the image now points at the target.
    fn image(&mut self, written: &Node) -> Result<bool, RewriteError> {
        let node = written.resolve();
        let Kind::Scalar { value, style } = &node.kind else {
            return Ok(false);
        };
        let (mut new, upstream) = match self.rules.decide(value.trim()) {
            Decision::Foreign => return Ok(false),
            Decision::AlreadyTargeted => return Ok(true),
            // berth's own name stays as written; only a pin adds to it.
            Decision::Own { pin } if self.pin.is_some() && pin.digest.is_none() => {
                (value.trim().to_string(), pin)
            }
            Decision::Own { .. } => return Ok(true),
            Decision::Rewrite { new, upstream } => (new, upstream),
            Decision::Unrewritable { reason } => {
                return Err(written.unsupported(format!("image {:?}: {reason}", value.trim())))
            }
        };
        if let (Some(pin), None) = (self.pin, &upstream.digest) {
            let digest = pin(&upstream)
                .and_then(|d| validate_digest(&d).map(|()| d).map_err(|e| e.to_string()))
                .map_err(|reason| RewriteError::Pin {
                    image: value.clone(),
                    line: written.line,
                    reason,
                })?;
            new.push('@');
            new.push_str(&digest);
        }
        let start = self.src.content_start(node.start).min(node.end);
        let original = &self.src.text[start..node.end.max(start)];
        // Check the span really is the scalar before overwriting it: a wrong
        // offset would silently corrupt the manifest.
        let text = match style {
            ScalarStyle::Plain if original == value => new,
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
                format!("{q}{new}{q}")
            }
            ScalarStyle::Plain => {
                return Err(
                    node.unsupported("plain image spans more than one line or holds a comment")
                )
            }
            _ => return Err(node.unsupported("block scalar image")),
        };
        self.edits.push(Edit {
            start,
            end: node.end,
            text,
        });
        Ok(true)
    }

    fn pull_secret(&mut self, spec: &Node, secret: &str) -> Result<(), RewriteError> {
        let Kind::Map { flow, entries } = &spec.kind else {
            return Ok(());
        };
        let flow_item = format!("{{name: {}}}", yaml_plain_or_quoted(secret));
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
                Some((k, _)) => self.insert(
                    self.key_start(k).0,
                    format!("imagePullSecrets: [{flow_item}], "),
                ),
                None => self.insert(
                    self.src.content_start(spec.start) + 1,
                    format!("imagePullSecrets: [{flow_item}]"),
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
