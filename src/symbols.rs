//! The symbol → per-symbol-state table, with a cap on distinct symbols.
//!
//! Owned by the engine thread (feature and policy state per symbol) and by offline tools that
//! must compute exactly what the engine computes. Storage is reserved up front for `cap`
//! symbols, so adding a symbol after start-up never allocates.

use std::collections::HashMap;

use crate::tick::{Reject, Symbol};

pub struct SymbolTable<S> {
    index: HashMap<Symbol, usize>,
    states: Vec<S>,
    cap: usize,
}

impl<S> SymbolTable<S> {
    /// A table for at most `cap` distinct symbols; `reserve` slots are allocated now
    /// (use `cap` on the engine so no symbol ever allocates).
    pub fn new(cap: usize, reserve: usize) -> Self {
        let reserve = reserve.min(cap);
        Self { index: HashMap::with_capacity(reserve), states: Vec::with_capacity(reserve), cap }
    }

    /// The slot of `symbol`, created with `init` on first sight. Fails with
    /// [`Reject::TooManySymbols`] once `cap` distinct symbols exist.
    pub fn slot(&mut self, symbol: Symbol, init: impl FnOnce() -> S) -> Result<usize, Reject> {
        if let Some(&i) = self.index.get(&symbol) {
            return Ok(i);
        }
        if self.states.len() >= self.cap {
            return Err(Reject::TooManySymbols);
        }
        self.states.push(init());
        self.index.insert(symbol, self.states.len() - 1);
        Ok(self.states.len() - 1)
    }

    /// The state for `symbol`, created with `init` on first sight (see [`SymbolTable::slot`]).
    pub fn get_or_insert_with(&mut self, symbol: Symbol, init: impl FnOnce() -> S) -> Result<&mut S, Reject> {
        let i = self.slot(symbol, init)?;
        Ok(&mut self.states[i])
    }

    /// The state in a slot returned by [`SymbolTable::slot`].
    pub fn at(&mut self, slot: usize) -> &mut S {
        &mut self.states[slot]
    }

    /// Forgets every symbol (capacity is kept).
    pub fn clear(&mut self) {
        self.index.clear();
        self.states.clear();
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// All symbols with their state (order unspecified).
    pub fn iter(&self) -> impl Iterator<Item = (&Symbol, &S)> {
        self.index.iter().map(|(s, &i)| (s, &self.states[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_distinct_symbols_but_keeps_serving_known_ones() {
        let mut t: SymbolTable<u32> = SymbolTable::new(2, 2);
        *t.get_or_insert_with(Symbol::new("A").unwrap(), || 0).unwrap() += 1;
        *t.get_or_insert_with(Symbol::new("B").unwrap(), || 0).unwrap() += 1;
        assert_eq!(t.get_or_insert_with(Symbol::new("C").unwrap(), || 0), Err(Reject::TooManySymbols));
        assert_eq!(*t.get_or_insert_with(Symbol::new("A").unwrap(), || 0).unwrap(), 1);
        assert_eq!(t.len(), 2);
    }
}
