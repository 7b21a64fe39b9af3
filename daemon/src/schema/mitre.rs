//! The MITRE ATT&CK catalogue (§4.5) and the identifier formats (ASCII digits only).

use std::sync::OnceLock;

/// The catalogue shipped with vvgate.
const BUILTIN_TSV: &str = include_str!("../../data/mitre-attack-enterprise.tsv");

/// Kind of a catalogue identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MitreKind {
    Tactic,
    Technique,
    Subtechnique,
}

/// The identifiers of `mitre-attack-enterprise.tsv`.
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    /// Sorted by id, ids unique.
    entries: Vec<(String, MitreKind)>,
}

impl Catalogue {
    /// The copy compiled into the binary. It is parsed once per process; each call returns a
    /// clone of that parse (about 700 short strings), so call it once at start-up and share
    /// the result. Should the embedded file ever fail to parse (a unit test guards against
    /// that), the catalogue is empty and every identifier is refused (fail closed).
    pub fn builtin() -> Self {
        static BUILTIN: OnceLock<Catalogue> = OnceLock::new();
        BUILTIN
            .get_or_init(|| Self::from_tsv(BUILTIN_TSV).unwrap_or_default())
            .clone()
    }

    /// Parse a catalogue file (`id<TAB>name<TAB>kind`, `#` comments).
    ///
    /// Lines starting with `#` and blank lines are skipped. Every other line must have exactly
    /// three tab-separated columns, a non-empty name, a kind of `tactic`, `technique` or
    /// `subtechnique`, and an id of that kind's form (`TA####`, `T####`, `T####.###`); ids
    /// must be unique. The error names the first offending line (1-based).
    pub fn from_tsv(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let mut cols = line.split('\t');
            let (Some(id), Some(name), Some(kind), None) =
                (cols.next(), cols.next(), cols.next(), cols.next())
            else {
                return Err(format!(
                    "line {line_no}: expected 3 tab-separated columns (id, name, kind)"
                ));
            };
            if name.trim().is_empty() {
                return Err(format!("line {line_no}: empty name"));
            }
            let kind = match kind.trim() {
                "tactic" => MitreKind::Tactic,
                "technique" => MitreKind::Technique,
                "subtechnique" => MitreKind::Subtechnique,
                other => return Err(format!("line {line_no}: unknown kind {other:?}")),
            };
            let well_formed = match kind {
                MitreKind::Tactic => is_tactic_id(id),
                MitreKind::Technique => is_technique_id(id) && !id.contains('.'),
                MitreKind::Subtechnique => is_subtechnique_id(id),
            };
            if !well_formed {
                return Err(format!(
                    "line {line_no}: identifier {id:?} is not a well-formed {} id",
                    kind_name(kind)
                ));
            }
            entries.push((id.to_owned(), kind, line_no));
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
        if let Some(pair) = entries.windows(2).find(|p| p[0].0 == p[1].0) {
            return Err(format!(
                "line {}: duplicate identifier {}",
                pair[1].2, pair[1].0
            ));
        }
        Ok(Self {
            entries: entries.into_iter().map(|(id, k, _)| (id, k)).collect(),
        })
    }

    pub fn lookup(&self, id: &str) -> Option<MitreKind> {
        self.entries
            .binary_search_by(|(e, _)| e.as_str().cmp(id))
            .ok()
            .map(|i| self.entries[i].1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `id` is in the catalogue as a technique or sub-technique.
    pub(super) fn is_technique(&self, id: &str) -> bool {
        matches!(
            self.lookup(id),
            Some(MitreKind::Technique | MitreKind::Subtechnique)
        )
    }

    /// Whether `id` is in the catalogue as a tactic.
    pub(super) fn is_tactic(&self, id: &str) -> bool {
        self.lookup(id) == Some(MitreKind::Tactic)
    }
}

fn kind_name(k: MitreKind) -> &'static str {
    match k {
        MitreKind::Tactic => "tactic",
        MitreKind::Technique => "technique",
        MitreKind::Subtechnique => "subtechnique",
    }
}

fn all_digits(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_digit)
}

/// `^T[0-9]{4}(\.[0-9]{3})?$`
pub(super) fn is_technique_id(s: &str) -> bool {
    match s.as_bytes() {
        [b'T', d @ ..] if d.len() == 4 => all_digits(d),
        [b'T', d @ .., b'.', s0, s1, s2] if d.len() == 4 => {
            all_digits(d) && all_digits(&[*s0, *s1, *s2])
        }
        _ => false,
    }
}

/// `^T[0-9]{4}\.[0-9]{3}$`
pub(super) fn is_subtechnique_id(s: &str) -> bool {
    is_technique_id(s) && s.len() == 9
}

/// `^TA[0-9]{4}$`
pub(super) fn is_tactic_id(s: &str) -> bool {
    matches!(s.as_bytes(), [b'T', b'A', d @ ..] if d.len() == 4 && all_digits(d))
}

/// A payload MITRE entry after Python's `strip()` and `upper()`, in `buf`. `None` when the
/// result cannot be an identifier: longer than 9 bytes or not ASCII (no non-ASCII character
/// upper-cases to `T`, `A`, a digit or `.`).
pub(super) fn normalise_id<'b>(trimmed: &str, buf: &'b mut [u8; 9]) -> Option<&'b str> {
    let b = trimmed.as_bytes();
    if b.len() > buf.len() || !trimmed.is_ascii() {
        return None;
    }
    let out = &mut buf[..b.len()];
    out.copy_from_slice(b);
    out.make_ascii_uppercase();
    std::str::from_utf8(out).ok()
}
