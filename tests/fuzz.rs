//! Property-based fuzzing (proptest; `cargo fuzz` needs a nightly toolchain this project does
//! not have) of the three parsers that face untrusted input: tick validation (including raw
//! protobuf bytes), the tick-file reader, and the manifest parser. None may panic; what they
//! accept must satisfy the invariants the engine relies on; what they refuse must say why.
//!
//! `make fuzz` runs these with many more cases (PROPTEST_CASES). Inputs that once broke
//! something live in `tests/fuzz-corpus/` and are replayed by `regression_corpus_*` every run.

use std::io::Write;
use std::path::PathBuf;

use proptest::prelude::*;
use prost::Message;
use quantd::model::Manifest;
use quantd::proto;
use quantd::tick::Tick;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-0.0),
        -1e6..1e6f64,
        1e-12..1e12f64,
    ]
}

fn any_tick() -> impl Strategy<Value = proto::Tick> {
    (
        prop_oneof![".{0,40}", "[A-Z]{1,32}", Just(String::new())],
        any::<u64>(),
        any::<i64>(),
        prop_oneof![0..2i32, any::<i32>()],
        (any_f64(), any_f64(), any_f64(), any_f64(), any_f64(), any_f64()),
        prop_oneof![0..3i32, any::<i32>()],
    )
        .prop_map(|(symbol, seq, ts, kind, (bp, bq, ap, aq, tp, tq), aggressor)| proto::Tick {
            symbol,
            seq,
            exchange_ts_ns: ts,
            kind,
            bid_px: bp,
            bid_qty: bq,
            ask_px: ap,
            ask_qty: aq,
            trade_px: tp,
            trade_qty: tq,
            aggressor,
        })
}

/// What the engine may assume about any tick that passed validation.
fn check_invariants(t: &Tick) {
    let s = t.symbol.as_str();
    assert!(!s.is_empty() && s.len() <= 32);
    let fields: &[f64] = match t.kind {
        quantd::tick::Kind::Quote => &[t.bid_px, t.bid_qty, t.ask_px, t.ask_qty],
        quantd::tick::Kind::Trade => &[t.trade_px, t.trade_qty],
    };
    assert!(fields.iter().all(|v| v.is_finite() && *v > 0.0), "{t:?}");
    if t.kind == quantd::tick::Kind::Quote {
        assert!(t.bid_px <= t.ask_px);
    }
}

proptest! {
    #[test]
    fn tick_validation_never_panics_and_accepts_only_sane_ticks(t in any_tick()) {
        if let Ok(tick) = Tick::from_proto(&t) {
            check_invariants(&tick);
            prop_assert_eq!(Tick::from_proto(&tick.to_proto()), Ok(tick));
        }
    }

    #[test]
    fn raw_protobuf_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(tick) = proto::Tick::decode(bytes.as_slice()).map_err(|_| ()).and_then(|t| Tick::from_proto(&t).map_err(|_| ())) {
            check_invariants(&tick);
        }
    }

    #[test]
    fn tick_file_reader_never_panics_and_names_the_line(
        header in prop_oneof![
            Just(quantd::tickfile::CANONICAL_HEADER.to_owned()),
            Just("local_ts_ns,exch_event_ts_ms,exch_tx_ts_ms,symbol,update_id,bid_px,bid_qty,ask_px,ask_qty".to_owned()),
            Just("local_ts_ns,exch_event_ts_ms,trade_ts_ms,symbol,trade_id,price,qty,buyer_is_maker".to_owned()),
            ".{0,60}",
        ],
        lines in prop::collection::vec(prop_oneof![
            "[0-9,.a-z\"-]{0,80}",
            "[0-9]{1,19},[0-9]{0,13},[0-9]{0,13},[A-Z]{0,8},[0-9]{1,5},[0-9.e-]{1,8},[0-9.]{1,6},[0-9.]{1,8},[0-9.]{1,6}",
            "[0-9]{1,5},[0-9]{1,19},[A-Z]{1,6},(quote|trade|x),[0-9.]{1,6},[0-9.]{1,6},[0-9.]{1,6},[0-9.]{1,6},[0-9.]{0,6},[0-9.]{0,6},(buy|sell|unknown|)",
        ], 0..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        let mut f = std::fs::File::create(&p).unwrap();
        writeln!(f, "{header}").unwrap();
        for l in &lines {
            writeln!(f, "{l}").unwrap();
        }
        drop(f);
        match quantd::tickfile::read_all(&[&p]) {
            Ok(ticks) => ticks.iter().for_each(check_invariants),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("t.csv"), "{}", msg);
            }
        }
    }

    #[test]
    fn manifest_parser_never_panics(text in prop_oneof![".{0,200}", mutated_manifest()]) {
        if let Ok(m) = toml::from_str::<Manifest>(&text) {
            let _ = m.check_static();
            let _ = m.label();
        }
    }
}

/// The real manifest with a random slice replaced by random text.
fn mutated_manifest() -> impl Strategy<Value = String> {
    let base = std::fs::read_to_string(repo().join("models/quantd-mlp/1/manifest.toml")).unwrap();
    let len = base.len();
    (0..len, 0..64usize, ".{0,16}").prop_map(move |(at, cut, with)| {
        let mut at = at;
        while !base.is_char_boundary(at) {
            at -= 1;
        }
        let mut end = (at + cut).min(base.len());
        while !base.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{}{}", &base[..at], with, &base[end..])
    })
}

#[test]
fn regression_corpus_tick_files() {
    let dir = repo().join("tests/fuzz-corpus");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "csv") {
            n += 1;
            if let Ok(ticks) = quantd::tickfile::read_all(&[&p]) {
                ticks.iter().for_each(check_invariants);
            }
        }
    }
    assert!(n > 0, "the corpus is not empty");
}

#[test]
fn the_hostile_manifest_is_refused_for_each_of_its_faults() {
    let text = std::fs::read_to_string(repo().join("tests/fuzz-corpus/hostile_manifest.toml")).unwrap();
    let problems = toml::from_str::<Manifest>(&text).unwrap().check_static();
    use quantd::problem::Kind;
    for (field, kind) in [
        ("model_file", Kind::Manifest),
        ("golden_tolerance", Kind::Golden),
        ("golden", Kind::Golden),
        ("features.schema_hash", Kind::Schema),
        ("policy", Kind::Manifest),
    ] {
        assert!(problems.has(field, kind), "{field} ({kind}) not reported in:\n{problems:#?}");
    }
}

#[test]
fn regression_corpus_manifests() {
    let dir = repo().join("tests/fuzz-corpus");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p).unwrap();
            if let Ok(m) = toml::from_str::<Manifest>(&text) {
                let _ = m.check_static();
            }
        }
    }
}
