//! The MITRE ATT&CK catalogue (§4.5).

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
    entries: Vec<(String, MitreKind)>,
}

impl Catalogue {
    /// The copy compiled into the binary.
    pub fn builtin() -> Self {
        todo!("schema: Catalogue::builtin")
    }

    /// Parse a catalogue file (`id<TAB>name<TAB>kind`, `#` comments).
    pub fn from_tsv(text: &str) -> Result<Self, String> {
        let _ = text;
        todo!("schema: Catalogue::from_tsv")
    }

    pub fn lookup(&self, id: &str) -> Option<MitreKind> {
        let _ = (id, &self.entries);
        todo!("schema: Catalogue::lookup")
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
