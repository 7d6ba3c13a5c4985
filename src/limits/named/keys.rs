//! The keys of one shard of a limit, stored so that a million of them stay small and a
//! lookup touches as little memory as possible.
//!
//! A key of up to 22 bytes (user ids, tenant names) is kept inside the map's slot rather
//! than in its own allocation: that saves the allocation's memory and, on lookup, the cache
//! miss of following a pointer to compare it. The empty key (a limit without `key`;
//! rendered keys are never empty) lives apart, so the commonest limit hashes nothing.

use super::limit::Entry;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// A shard sweeps its idle keys when it has grown to this many keys since its last sweep
/// (and then at twice its size), so memory follows live keys without a background task.
const FIRST_SWEEP: usize = 1024;
/// The longest key kept inline.
const INLINE: usize = 22;

/// A key's text, inline when short.
enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Key {
    fn new(text: &str) -> Key {
        if text.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            Key::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(Box::from(text))
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `str` whole, so always valid UTF-8.
            Key::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Key::Heap(s) => s,
        }
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

/// The keys of a shard. The empty key (a limit without `key`; rendered keys are never
/// empty) lives apart, so that the commonest limit takes no hashing at all.
#[derive(Default)]
pub(super) struct Keys {
    solo: Option<Entry>,
    map: HashMap<Key, Entry>,
}

impl Keys {
    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        if key.is_empty() {
            self.solo.as_mut()
        } else {
            self.map.get_mut(key)
        }
    }

    pub(super) fn insert(&mut self, key: &str, entry: Entry) {
        if key.is_empty() {
            self.solo = Some(entry);
        } else {
            self.map.insert(Key::new(key), entry);
        }
    }

    pub(super) fn remove(&mut self, key: &str) {
        if key.is_empty() {
            self.solo = None;
        } else {
            self.map.remove(key);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len() + usize::from(self.solo.is_some())
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.solo.iter().chain(self.map.values())
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.solo.iter_mut().chain(self.map.values_mut())
    }
}

/// Drops the idle keys of one shard, gives their memory back, and returns the size at
/// which the shard should sweep next.
pub(super) fn sweep(keys: &mut Keys, now: u64) -> usize {
    if keys.solo.as_ref().is_some_and(|e| e.state.is_idle(now)) {
        keys.solo = None;
    }
    let map = &mut keys.map;
    map.retain(|_, e| !e.state.is_idle(now));
    if map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
    (keys.len() * 2).max(FIRST_SWEEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_inline_in_a_slot_no_bigger_than_a_boxed_one_plus_a_word() {
        assert!(std::mem::size_of::<Key>() <= 24);
        for text in [
            "u",
            "user-0123456789abcdefg",
            "user-0123456789abcdefgh-long",
        ] {
            let key = Key::new(text);
            assert_eq!(key.as_str(), text);
            assert_eq!(matches!(key, Key::Inline { .. }), text.len() <= INLINE);
        }
    }
}
