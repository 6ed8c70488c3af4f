//! The symbol → shard routing rule for running several replicas, each owning a shard of the
//! symbols (a StatefulSet whose pod ordinal is the shard index), and this replica's `[shard]`
//! settings.
//!
//! The rule is a contract with the gateway, which must route every symbol to the replica that
//! owns it, so it is small enough to re-implement exactly in any language:
//!
//! 1. `key` = FNV-1a 64-bit hash of the symbol's UTF-8 bytes (offset basis
//!    `0xcbf29ce484222325`, prime `0x100000001b3`);
//! 2. shard = Jump Consistent Hash (Lamping & Veach, 2014) of `key` over `count` buckets.
//!
//! Jump hashing moves only about 1/(n+1) of the symbols when a replica is added, so scaling out
//! re-routes the fewest symbols (and their warm feature state). The check runs on the gRPC I/O
//! threads, once per new symbol of a stream (symbols already seen on the stream skip it).

use serde::{Deserialize, Serialize};

use crate::problem::{Kind, Problems};

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump Consistent Hash: a bucket in `0..buckets` for `key` (`buckets` >= 1).
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The shard in `0..count` that owns `symbol`.
pub fn shard_of(symbol: &str, count: u32) -> u32 {
    jump_consistent_hash(fnv1a64(symbol.as_bytes()), count.max(1))
}

/// `[shard]`: which shard of the symbols this replica owns. `count = 1`: all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardConfig {
    /// This replica's shard, `0..count` (the StatefulSet pod ordinal; env QUANTD_SHARD_INDEX).
    pub index: u32,
    /// Number of shards (replicas); env QUANTD_SHARD_COUNT.
    pub count: u32,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl ShardConfig {
    /// The section's own problems (fields named `shard.*`).
    pub fn problems(&self) -> Problems {
        let mut p = Problems::new();
        p.check(self.count == 0 || self.index >= self.count, "shard.index", Kind::OutOfRange, || {
            format!("shard.index {} must be in 0..shard.count ({})", self.index, self.count)
        });
        p
    }

    /// Whether this replica serves `symbol`.
    #[inline]
    pub fn owns(&self, symbol: &str) -> bool {
        self.count <= 1 || shard_of(symbol, self.count) == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned values: the gateway's implementation must give the same shards.
    #[test]
    fn the_routing_rule_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // Values from an independent implementation of the paper's C++ code (Python floats are
        // IEEE doubles, as there).
        assert_eq!(jump_consistent_hash(0, 1), 0);
        assert_eq!(jump_consistent_hash(1, 2), 0);
        assert_eq!(jump_consistent_hash(0xdead_beef, 3), 2);
        let wide: Vec<u32> = [1, 0xdead_beef, u64::MAX].iter().map(|&k| jump_consistent_hash(k, 1000)).collect();
        assert_eq!(wide, [549, 285, 313]);
        let pinned: Vec<u32> =
            ["BTCUSDT", "ETHUSDT", "XRPETH", "EURUSD", "USDJPY"].iter().map(|s| shard_of(s, 4)).collect();
        assert_eq!(pinned, PINNED_4);
    }

    const PINNED_4: [u32; 5] = [0, 0, 2, 1, 3];

    #[test]
    fn shards_are_balanced_and_scaling_out_moves_few_symbols() {
        let symbols: Vec<String> = (0..20_000).map(|i| format!("SYM{i:05}USDT")).collect();
        for n in [2u32, 3, 4, 8, 16] {
            let mut counts = vec![0usize; n as usize];
            for s in &symbols {
                counts[shard_of(s, n) as usize] += 1;
            }
            // Within 4 standard deviations of a fair multinomial split (the symbols are fixed, so
            // this is deterministic; a biased rule lands far outside).
            let mean = symbols.len() as f64 / f64::from(n);
            let sd = (mean * (1.0 - 1.0 / f64::from(n))).sqrt();
            for (i, &c) in counts.iter().enumerate() {
                assert!((c as f64 - mean).abs() < 4.0 * sd, "{n} shards: shard {i} has {c}, mean {mean}, sd {sd:.1}");
            }
            let moved = symbols.iter().filter(|s| shard_of(s, n) != shard_of(s, n + 1)).count() as f64;
            let expected = symbols.len() as f64 / f64::from(n + 1);
            assert!((moved - expected).abs() / expected < 0.1, "{n}->{}: moved {moved}, expected ~{expected}", n + 1);
            // Those that move go to the new shard only.
            assert!(symbols.iter().all(|s| shard_of(s, n) == shard_of(s, n + 1) || shard_of(s, n + 1) == n));
        }
    }

    #[test]
    fn one_shard_owns_everything_and_bad_indices_are_refused() {
        assert!(ShardConfig::default().owns("ANY"));
        assert!(!ShardConfig { index: 2, count: 2 }.problems().is_empty());
        assert!(!ShardConfig { index: 0, count: 0 }.problems().is_empty());
        let owners = (0..4).filter(|&i| ShardConfig { index: i, count: 4 }.owns("BTCUSDT")).count();
        assert_eq!(owners, 1);
    }
}
