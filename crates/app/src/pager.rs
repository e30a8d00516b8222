//! The one range pager: walks a [`KeyRange`] a page at a time, at most `limit` entries in all, so any
//! range is served in bounded memory. Every adapter pages through it: the server's `/readrange` and
//! `/v1/kv` (over the engine), `kvctl` (over the engine or the HTTP client).
//!
//! [`Pager`] is the cursor logic without I/O: [`Pager::next_request`] says which page to fetch,
//! [`Pager::advance`] takes what came back. A synchronous source drives it with [`Pager::pages`]; an
//! asynchronous one (the CLI's HTTP client) calls the two methods in its own loop.
//!
//! The walk ends after a page shorter than asked for (the range holds no more), or once `limit` entries
//! came. The next page starts strictly after the last key seen.

use std::ops::Bound;

use kv_domain::{Entry, Key, KeyRange};

use crate::AppError;

/// Refuses a range whose included start is after its included end (the one place this is checked).
pub fn check_range(range: &KeyRange) -> Result<(), AppError> {
    if let (Bound::Included(s), Bound::Included(e)) = (&range.start, &range.end) {
        if s > e {
            return Err(AppError::InvertedRange {
                start: crate::service::lossy(s),
                end: crate::service::lossy(e),
            });
        }
    }
    Ok(())
}

/// The position of a walk through a range.
#[derive(Clone, Debug)]
pub struct Pager {
    range: KeyRange,
    limit: usize,
    page_size: usize,
    sent: usize,
    last: Option<Key>,
    done: bool,
}

impl Pager {
    /// A walk of at most `limit` entries of `range`, `page_size` at a time; refuses an inverted range.
    pub fn new(range: KeyRange, limit: usize, page_size: usize) -> Result<Self, AppError> {
        check_range(&range)?;
        Ok(Self {
            range,
            limit,
            page_size: page_size.max(1),
            sent: 0,
            last: None,
            done: limit == 0,
        })
    }

    /// The page to fetch next (its range and size), or `None` when the walk is over.
    pub fn next_request(&self) -> Option<(KeyRange, usize)> {
        if self.done {
            return None;
        }
        let range = match &self.last {
            Some(last) => self.range.after(last),
            None => self.range.clone(),
        };
        Some((range, self.want()))
    }

    fn want(&self) -> usize {
        self.page_size.min(self.limit - self.sent)
    }

    /// Records a page of `len` entries whose last key is `last`, fetched for [`Pager::next_request`].
    pub fn advance(&mut self, len: usize, last: Option<&[u8]>) {
        let want = self.want();
        self.sent += len;
        if let Some(last) = last {
            self.last = Some(Key::from(last));
        }
        if len == 0 || len < want || self.sent >= self.limit {
            self.done = true;
        }
    }

    /// The range walked (as given, before any continuation).
    pub fn range(&self) -> &KeyRange {
        &self.range
    }

    /// Entries walked so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// The last key walked, if any (where a continuation would start after).
    pub fn last_key(&self) -> Option<&Key> {
        self.last.as_ref()
    }

    /// Whether the walk is over: no page is left to fetch.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the walk stopped at its limit (rather than at the end of the range).
    pub fn reached_limit(&self) -> bool {
        self.sent >= self.limit
    }

    /// The pages, fetched from `source` (`source(range, n)`: up to `n` entries of `range`, ascending).
    pub fn pages<S, E>(&mut self, source: S) -> Pages<'_, S>
    where
        S: FnMut(&KeyRange, usize) -> Result<Vec<Entry>, E>,
    {
        Pages {
            pager: self,
            source,
        }
    }
}

/// An iterator of the pages of a [`Pager`]; an error ends it.
#[derive(Debug)]
pub struct Pages<'a, S> {
    pager: &'a mut Pager,
    source: S,
}

impl<S, E> Iterator for Pages<'_, S>
where
    S: FnMut(&KeyRange, usize) -> Result<Vec<Entry>, E>,
{
    type Item = Result<Vec<Entry>, E>;

    fn next(&mut self) -> Option<Self::Item> {
        let (range, want) = self.pager.next_request()?;
        match (self.source)(&range, want) {
            Ok(page) => {
                self.pager
                    .advance(page.len(), page.last().map(|e| e.key.as_bytes()));
                if page.is_empty() {
                    return None;
                }
                Some(Ok(page))
            }
            Err(e) => {
                self.pager.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kv_domain::{Engine, MemoryEngine};

    fn engine(keys: usize) -> MemoryEngine {
        let e = MemoryEngine::new();
        for i in 0..keys {
            e.put(format!("k{i:03}").as_bytes(), b"v").unwrap();
        }
        e
    }

    /// Pages of the walk, as their lengths, and the requests the source saw.
    fn walk(e: &MemoryEngine, range: KeyRange, limit: usize, page: usize) -> (Vec<usize>, usize) {
        let mut calls = 0;
        let mut pager = Pager::new(range, limit, page).unwrap();
        let lens = pager
            .pages(|r: &KeyRange, n| {
                calls += 1;
                e.scan(r, n)
            })
            .map(|p| p.unwrap().len())
            .collect();
        (lens, calls)
    }

    #[test]
    fn walks_every_entry_once_in_pages() {
        let e = engine(10);
        assert_eq!(
            walk(&e, KeyRange::all(), usize::MAX, 3),
            (vec![3, 3, 3, 1], 4)
        );
        assert_eq!(
            walk(&e, KeyRange::all(), usize::MAX, 5),
            (vec![5, 5], 3),
            "an exact fit needs one empty probe"
        );
        assert_eq!(
            walk(&e, KeyRange::all(), 7, 3),
            (vec![3, 3, 1], 3),
            "the limit trims the last page"
        );
        assert_eq!(
            walk(&e, KeyRange::all(), 6, 3),
            (vec![3, 3], 2),
            "stops at the limit without a probe"
        );
        assert_eq!(
            walk(&e, KeyRange::inclusive("k002", "k004"), 100, 2),
            (vec![2, 1], 2)
        );
        assert_eq!(walk(&e, KeyRange::all(), 0, 3), (vec![], 0));
    }

    #[test]
    fn continues_strictly_after_the_last_key() {
        let e = engine(5);
        let mut pager = Pager::new(KeyRange::all(), usize::MAX, 2).unwrap();
        let keys: Vec<Key> = pager
            .pages(|r: &KeyRange, n| e.scan(r, n))
            .flat_map(|p| p.unwrap().into_iter().map(|e| e.key))
            .collect();
        let expected: Vec<Key> = (0..5).map(|i| Key::from(format!("k{i:03}"))).collect();
        assert_eq!(keys, expected);
        assert_eq!(pager.sent(), 5);
        assert!(!pager.reached_limit());
        assert_eq!(pager.last_key(), Some(&Key::from("k004")));
    }

    #[test]
    fn an_inverted_range_is_refused() {
        assert!(matches!(
            Pager::new(KeyRange::inclusive("b", "a"), 10, 2),
            Err(AppError::InvertedRange { .. })
        ));
        assert!(Pager::new(KeyRange::inclusive("a", "a"), 10, 2).is_ok());
    }

    #[test]
    fn an_error_ends_the_walk() {
        let mut pager = Pager::new(KeyRange::all(), 10, 2).unwrap();
        let pages: Vec<Result<Vec<Entry>, &str>> =
            pager.pages(|_: &KeyRange, _| Err("down")).collect();
        assert_eq!(pages, vec![Err("down")]);
    }
}
