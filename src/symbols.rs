//! The symbol → per-symbol-state table, with a cap on distinct symbols and eviction of idle
//! ones.
//!
//! Owned by the engine thread (feature and policy state per symbol) and by offline tools that
//! must compute exactly what the engine computes. Storage is reserved up front for `cap`
//! symbols, so adding, removing or evicting a symbol after start-up never allocates. A removed
//! symbol's slot goes on a free list and is handed to the next new symbol, with fresh state.
//!
//! Each slot remembers when its symbol was last seen, in whatever clock the owner passes (the
//! engine: server receive time, or exchange time in replay), so [`SymbolTable::evict_idle`]
//! can free the slots of symbols that stopped ticking: a burst of junk symbols cannot lock real
//! ones out for good.

use std::collections::HashMap;

use crate::tick::{Reject, Symbol};

/// A fixed-capacity table of per-symbol state, indexed by symbol, with slots reused after eviction.
pub struct SymbolTable<S> {
    index: HashMap<Symbol, usize>,
    states: Vec<S>,
    /// By slot: its symbol (meaningless while the slot is free).
    names: Vec<Symbol>,
    /// By slot: when its symbol was last seen (owner's clock, ns).
    seen_ns: Vec<i64>,
    free: Vec<usize>,
    cap: usize,
}

impl<S> SymbolTable<S> {
    /// A table for at most `cap` distinct symbols; `reserve` slots are allocated now
    /// (use `cap` on the engine so no symbol ever allocates).
    pub fn new(cap: usize, reserve: usize) -> Self {
        let reserve = reserve.min(cap);
        Self {
            index: HashMap::with_capacity(reserve),
            states: Vec::with_capacity(reserve),
            names: Vec::with_capacity(reserve),
            seen_ns: Vec::with_capacity(reserve),
            free: Vec::with_capacity(reserve),
            cap,
        }
    }

    /// The slot of `symbol` and whether it was created now (with `init`). Fails with
    /// [`Reject::TooManySymbols`] once `cap` distinct symbols exist.
    pub fn slot(&mut self, symbol: Symbol, init: impl FnOnce() -> S) -> Result<(usize, bool), Reject> {
        if let Some(&i) = self.index.get(&symbol) {
            return Ok((i, false));
        }
        let slot = if let Some(slot) = self.free.pop() {
            self.states[slot] = init();
            self.names[slot] = symbol;
            slot
        } else if self.states.len() < self.cap {
            self.states.push(init());
            self.names.push(symbol);
            self.seen_ns.push(i64::MIN);
            self.states.len() - 1
        } else {
            return Err(Reject::TooManySymbols);
        };
        self.index.insert(symbol, slot);
        Ok((slot, true))
    }

    /// The slot of `symbol`, if it is in the table (never creates one).
    pub fn find(&self, symbol: &Symbol) -> Option<usize> {
        self.index.get(symbol).copied()
    }

    /// The state for `symbol`, created with `init` on first sight (see [`SymbolTable::slot`]).
    pub fn get_or_insert_with(&mut self, symbol: Symbol, init: impl FnOnce() -> S) -> Result<&mut S, Reject> {
        let (i, _) = self.slot(symbol, init)?;
        Ok(&mut self.states[i])
    }

    /// The symbol in a slot returned by [`SymbolTable::slot`].
    pub fn name(&self, slot: usize) -> Symbol {
        self.names[slot]
    }

    /// The state in a slot returned by [`SymbolTable::slot`].
    pub fn at(&mut self, slot: usize) -> &mut S {
        &mut self.states[slot]
    }

    /// Marks the symbol in `slot` as seen at `now_ns`.
    #[inline]
    pub fn touch(&mut self, slot: usize, now_ns: i64) {
        let seen = &mut self.seen_ns[slot];
        *seen = (*seen).max(now_ns);
    }

    /// Forgets the symbol in `slot`; its slot is reused by the next new symbol.
    pub fn remove(&mut self, slot: usize) {
        if self.index.get(&self.names[slot]) == Some(&slot) {
            self.index.remove(&self.names[slot]);
            self.free.push(slot);
            self.seen_ns[slot] = i64::MIN;
        }
    }

    /// Removes every symbol not seen for `idle_ns` before `now_ns` for which `evict` (given
    /// its slot, symbol and state before it goes) says yes. Returns how many went. One pass over
    /// the slots: the owner calls it between batches, not per tick.
    pub fn evict_idle(&mut self, now_ns: i64, idle_ns: i64, mut evict: impl FnMut(usize, Symbol, &S) -> bool) -> usize {
        let mut n = 0;
        for slot in 0..self.states.len() {
            let seen = self.seen_ns[slot];
            if seen != i64::MIN
                && now_ns.saturating_sub(seen) >= idle_ns
                && evict(slot, self.names[slot], &self.states[slot])
            {
                self.remove(slot);
                n += 1;
            }
        }
        n
    }

    /// Forgets every symbol (capacity is kept).
    pub fn clear(&mut self) {
        self.index.clear();
        self.states.clear();
        self.names.clear();
        self.seen_ns.clear();
        self.free.clear();
    }

    /// Symbols in the table.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no symbol is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether a new symbol would be refused now.
    pub fn is_full(&self) -> bool {
        self.free.is_empty() && self.states.len() >= self.cap
    }

    /// All symbols with their state (order unspecified).
    pub fn iter(&self) -> impl Iterator<Item = (&Symbol, &S)> {
        self.index.iter().map(|(s, &i)| (s, &self.states[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str) -> Symbol {
        Symbol::new(s).unwrap()
    }

    #[test]
    fn caps_distinct_symbols_but_keeps_serving_known_ones() {
        let mut t: SymbolTable<u32> = SymbolTable::new(2, 2);
        *t.get_or_insert_with(sym("A"), || 0).unwrap() += 1;
        *t.get_or_insert_with(sym("B"), || 0).unwrap() += 1;
        assert_eq!(t.get_or_insert_with(sym("C"), || 0), Err(Reject::TooManySymbols));
        assert_eq!(*t.get_or_insert_with(sym("A"), || 0).unwrap(), 1);
        assert_eq!(t.len(), 2);
        assert!(t.is_full());
    }

    #[test]
    fn idle_symbols_are_evicted_and_their_slots_reused_with_fresh_state() {
        let mut t: SymbolTable<u32> = SymbolTable::new(2, 2);
        let (a, _) = t.slot(sym("A"), || 7).unwrap();
        let (b, _) = t.slot(sym("B"), || 8).unwrap();
        t.touch(a, 100);
        t.touch(b, 1_000);
        let mut gone = Vec::new();
        assert_eq!(
            t.evict_idle(1_050, 500, |slot, s, v| {
                gone.push((slot, s, *v));
                true
            }),
            1
        );
        assert_eq!(gone, [(a, sym("A"), 7)]);
        assert_eq!(t.find(&sym("A")), None);
        assert_eq!(t.len(), 1);
        let (c, new) = t.slot(sym("C"), || 9).unwrap();
        assert!(new);
        assert_eq!(c, a);
        assert_eq!(*t.at(c), 9);
        assert_eq!(t.find(&sym("B")), Some(b));
        assert_eq!(t.slot(sym("D"), || 0), Err(Reject::TooManySymbols));
        // A slot never seen (created but not touched) is not evicted: it has no age.
        assert_eq!(t.evict_idle(i64::MAX, 1, |_, _, _| true), 1);
        // The owner may keep one.
        let mut t: SymbolTable<u32> = SymbolTable::new(2, 2);
        let (k, _) = t.slot(sym("K"), || 1).unwrap();
        t.touch(k, 0);
        assert_eq!(t.evict_idle(i64::MAX, 1, |_, _, v| *v != 1), 0);
        assert_eq!(t.find(&sym("K")), Some(k));
    }

    #[test]
    fn remove_is_idempotent() {
        let mut t: SymbolTable<u32> = SymbolTable::new(2, 2);
        let (a, _) = t.slot(sym("A"), || 1).unwrap();
        t.remove(a);
        t.remove(a);
        assert_eq!(t.len(), 0);
        let (x, _) = t.slot(sym("X"), || 2).unwrap();
        let (y, _) = t.slot(sym("Y"), || 3).unwrap();
        assert_ne!(x, y);
        assert!(t.is_full());
        // A stale remove of a freed slot whose symbol came back elsewhere changes nothing.
        let mut t: SymbolTable<u32> = SymbolTable::new(3, 3);
        let (a, _) = t.slot(sym("A"), || 1).unwrap();
        let (b, _) = t.slot(sym("B"), || 1).unwrap();
        t.remove(a);
        t.remove(b);
        let (a2, _) = t.slot(sym("A"), || 1).unwrap();
        assert_eq!(a2, b);
        t.remove(a);
        assert_eq!(t.find(&sym("A")), Some(a2));
    }
}
