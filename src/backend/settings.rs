//! A session's settings as a value: what an upstream connection has, and what a client expects
//! of the connection that serves it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

/// (lowercase name, value) pairs sorted by name; cheap to clone, and equal lists that were
/// cloned from one another compare in one step.
#[derive(Debug, Clone, Default)]
pub struct SettingList(Arc<Pairs>);

impl PartialEq for SettingList {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl SettingList {
    /// A list from pairs in any order; of two pairs with one name, the first is kept.
    pub fn new(mut pairs: Vec<(String, String)>) -> Self {
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, first| later.0 == first.0);
        Self(Arc::new(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, String)> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Makes equal lists one list, so that comparing them at a hand-over is one pointer compare.
/// Lists nobody holds any more are forgotten.
#[derive(Debug, Default)]
pub struct Interner {
    lists: Mutex<HashMap<u64, Vec<Weak<Pairs>>>>,
}

type Pairs = Vec<(String, String)>;

impl Interner {
    pub fn intern(&self, list: SettingList) -> SettingList {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        list.0.hash(&mut h);
        let key = h.finish();
        let mut lists = self.lists.lock().expect("setting lists lock");
        let same = lists.entry(key).or_default();
        same.retain(|w| w.strong_count() > 0);
        if let Some(found) = same
            .iter()
            .filter_map(Weak::upgrade)
            .find(|a| **a == *list.0)
        {
            return SettingList(found);
        }
        same.push(Arc::downgrade(&list.0));
        if lists.len() > 4096 {
            lists.retain(|_, v| v.iter().any(|w| w.strong_count() > 0));
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_first_wins_and_compares_by_content() {
        let a = SettingList::new(vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ]);
        assert_eq!(a.get("b"), Some("2"));
        assert_eq!(
            a.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let same = SettingList::new(vec![("a".into(), "1".into()), ("b".into(), "2".into())]);
        assert_eq!(a, same);
        assert_ne!(a, SettingList::default());
        let interner = Interner::default();
        let (x, y) = (interner.intern(a.clone()), interner.intern(same));
        assert!(Arc::ptr_eq(&x.0, &y.0), "equal lists become one");
    }
}
