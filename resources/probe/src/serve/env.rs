//! Reads string members of small JSON objects without a JSON library: one variable of the
//! `env` object of `herd/image.json` or `herd/instance.json` ([`var`]), and top-level members
//! such as `instance_id` there or in the control port's `restored` line ([`string`]). A
//! scanner follows the document's structure just enough to find the member, skipping every
//! other value whole (strings with their escapes, nested objects and arrays). So a key or value
//! that merely appears inside some other string (an argument, the hostname) is never taken for
//! the member. A value is returned raw, escapes included: the values the probe understands
//! need none. Malformed documents yield nothing; [`whole_object`] checks that a document is
//! one complete object (brackets balanced, strings closed) before its members are trusted.

/// Nesting the scanner follows in a skipped value; deeper documents yield nothing.
const MAX_DEPTH: usize = 16;

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        while self.b.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    /// Skips whitespace, then takes `c` if it is next.
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        let hit = self.b.get(self.at) == Some(&c);
        self.at += usize::from(hit);
        hit
    }

    /// A string's raw contents (between the quotes, escapes as written).
    fn string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.at;
        loop {
            match *self.b.get(self.at)? {
                b'"' => break,
                b'\\' => self.at += 2,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        self.b.get(start..self.at - 1)
    }

    /// Skips one value of any kind.
    fn skip_value(&mut self) -> Option<()> {
        self.skip_ws();
        let mut depth = 0usize;
        loop {
            match *self.b.get(self.at)? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    self.at += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                }
                b'}' | b']' if depth > 0 => {
                    depth -= 1;
                    self.at += 1;
                }
                // The end of a scalar (or of the container around it).
                b',' | b'}' | b']' if depth == 0 => return Some(()),
                _ => self.at += 1,
            }
            if depth == 0 && self.at > 0 && matches!(self.b[self.at - 1], b'"' | b'}' | b']') {
                return Some(());
            }
        }
    }

    /// Walks the members of the object that starts here; returns the value of the first
    /// member named `key` for which `found` gives something.
    fn member<T>(
        &mut self,
        key: &[u8],
        mut found: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<T> {
        if !self.eat(b'{') || self.eat(b'}') {
            return None;
        }
        loop {
            let name = self.string()?;
            if !self.eat(b':') {
                return None;
            }
            if name == key {
                let start = self.at;
                if let Some(t) = found(self) {
                    return Some(t);
                }
                self.at = start;
            }
            self.skip_value()?;
            if !self.eat(b',') {
                return None;
            }
        }
    }
}

/// The raw value of string variable `name` in the top-level `env` object of `doc`.
pub fn var<'a>(doc: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut c = Cursor { b: doc, at: 0 };
    c.member(b"env", |c| c.member(name, |c| c.string()))
}

/// The raw value of the top-level string member `key` of the object `doc`.
pub fn string<'a>(doc: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    Cursor { b: doc, at: 0 }.member(key, |c| c.string())
}

/// Whether `doc` is one complete object and nothing else but whitespace (its structure, not
/// every token, is checked: brackets balance and strings close).
pub fn whole_object(doc: &[u8]) -> bool {
    let mut c = Cursor { b: doc, at: 0 };
    c.skip_ws();
    if c.b.get(c.at) != Some(&b'{') || c.skip_value().is_none() {
        return false;
    }
    c.skip_ws();
    c.at == doc.len()
}
