//! Routes: which model scores a tick, and whose position it moves.
//!
//! A tick's route is chosen by, in order of precedence:
//! 1. its stream's request metadata `x-quantd-model: name[@version]` ([`MODEL_HEADER`]): the
//!    named model's own *stream route* (`stream:<name>`, the manifest's policy);
//! 2. the config's `[[routes]]` ([`RouteSpec`]): the first whose `symbols` (exact names or
//!    globs, `BTC*`) match the tick's symbol;
//! 3. the default route: the default model (`models/DEFAULT`, or the served name).
//!
//! A route is a strategy: it names a model and may override that model's `[policy]`, and the
//! engine keeps each symbol's position per route, so two strategies on one symbol never share a
//! position.
//!
//! Owns the `[[routes]]` settings and their validation, the engine's route table ([`Routes`],
//! built at start and grown by the `quantd-engine` thread when a model name goes live) and the
//! parsing of the stream header (on the `quantd-io` threads).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::PolicyParams;
use crate::problem::{Kind, Problems};

/// Request metadata that names the model a stream's ticks are scored by (`name` or
/// `name@version`), ahead of the config's routes.
pub const MODEL_HEADER: &str = "x-quantd-model";

/// Most model names live in the engine at once.
pub const MAX_MODELS: usize = 8;

/// Most routes: the default, the config's, and one stream route per live model.
pub const MAX_ROUTES: usize = 32;

/// Most config routes (`[[routes]]`): what [`MAX_ROUTES`] leaves after the default and the
/// stream routes.
pub const MAX_CONFIG_ROUTES: usize = MAX_ROUTES - 1 - MAX_MODELS;

/// Most symbol patterns in one route: the engine matches a symbol it has not seen against every
/// route's patterns, so their number bounds that lookup on the engine thread.
pub const MAX_ROUTE_SYMBOLS: usize = 256;

/// Longest symbol pattern, route name or model, in bytes (a symbol is at most
/// [`crate::tick::MAX_SYMBOL_LEN`]).
pub const MAX_ROUTE_TEXT: usize = 128;

/// Most routes one symbol can hold a position on at once (its state is sized for them up front;
/// a tick on a further route is rejected `too_many_routes`).
pub const BOOKS_PER_SYMBOL: usize = 4;

/// A route's index in the engine's table (stable for the life of the engine).
pub type RouteId = u8;

/// A tick routed by its symbol (no stream header).
pub const BY_SYMBOL: RouteId = RouteId::MAX;

/// The default route's id.
pub const DEFAULT_ROUTE: RouteId = 0;

/// One `[[routes]]` entry of the config.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The route's name in signals, metrics and the admin API (default: `route-<n>`, from 1).
    #[serde(default)]
    pub name: Option<String>,
    /// Symbols it takes: exact names or globs (`*`, `?`, `[...]`).
    pub symbols: Vec<String>,
    /// The model name that scores them (its active version; `models/<model>/`), or
    /// `name@version` to pin that name to one version (no automatic swaps of it).
    pub model: String,
    /// Replaces the model manifest's `[policy]` on this route.
    #[serde(default)]
    pub policy: Option<PolicyParams>,
}

impl RouteSpec {
    /// The route's name: its own, or `route-<n>` for the `n`th entry (from 1).
    pub fn name(&self, n: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("route-{n}"))
    }

    /// The model name, without a pinned version.
    pub fn model_name(&self) -> &str {
        model_name(&self.model)
    }

    /// The version the route pins its model name to, if any.
    pub fn pinned(&self) -> Option<&str> {
        self.model.split_once('@').map(|(_, version)| version)
    }
}

/// Every problem with the `[[routes]]` entries (empty: valid).
pub fn problems(specs: &[RouteSpec]) -> Problems {
    let mut p = Problems::new();
    p.check(specs.len() > MAX_CONFIG_ROUTES, "routes", Kind::OutOfRange, || {
        format!("{} routes; at most {MAX_CONFIG_ROUTES}", specs.len())
    });
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in specs.iter().enumerate() {
        let name = s.name(i + 1);
        let at = format!("routes[{i}]");
        // First, so that no message below quotes a huge text.
        let long = [&name, &s.model].into_iter().chain(&s.symbols).find(|t| t.len() > MAX_ROUTE_TEXT);
        if let Some(t) = long {
            let t = crate::text::clip_to(t, 40);
            p.push(
                &at,
                Kind::OutOfRange,
                format!("\"{t}\" is longer than {MAX_ROUTE_TEXT} bytes (route names, models and symbol patterns)"),
            );
            continue;
        }
        p.check(!names.insert(name.clone()), &at, Kind::Conflict, || format!("route name {name:?} is used twice"));
        p.check(name.is_empty() || name == "default" || name.starts_with("stream:"), &at, Kind::Invalid, || {
            format!("route name {name:?} is empty or reserved (\"default\", \"stream:...\")")
        });
        p.check(parse_model_header(&s.model).is_none(), &at, Kind::Invalid, || {
            format!(
                "route {name:?}: model {:?} must be a model name (a directory under models_dir) or name@version",
                s.model
            )
        });
        p.check(s.symbols.is_empty(), &at, Kind::Missing, || format!("route {name:?} has no symbols"));
        p.check(s.symbols.len() > MAX_ROUTE_SYMBOLS, &at, Kind::OutOfRange, || {
            format!("route {name:?} has {} symbol patterns; at most {MAX_ROUTE_SYMBOLS}", s.symbols.len())
        });
        for pattern in s.symbols.iter().take(MAX_ROUTE_SYMBOLS) {
            if let Err(e) = glob::Pattern::new(pattern) {
                p.push(&at, Kind::Invalid, format!("route {name:?}: symbol pattern {pattern:?}: {e}"));
            }
        }
        if let Some(Err(e)) = s.policy.as_ref().map(PolicyParams::validate) {
            p.push(&at, Kind::OutOfRange, format!("route {name:?}: policy: {e}"));
        }
    }
    p
}

fn valid_model_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['@', '/', '\\']) && name != "." && name != ".."
}

/// The model name of `name` or `name@version` (a route's model, a signal's label).
pub fn model_name(label: &str) -> &str {
    label.split_once('@').map_or(label, |(name, _)| name)
}

/// A model named by a stream's [`MODEL_HEADER`]: `name` and the version it asks for ("": the
/// active one).
pub fn parse_model_header(value: &str) -> Option<(&str, &str)> {
    let (name, version) = value.split_once('@').unwrap_or((value, ""));
    let ok = valid_model_name(name) && (value.find('@').is_none() || !version.is_empty()) && !version.contains('@');
    ok.then_some((name, version))
}

/// One route of the engine's table.
#[derive(Clone, Debug)]
pub struct Route {
    /// `default`, a config route's name, or `stream:<model>`.
    pub name: Arc<str>,
    /// The model name that scores its ticks.
    pub model: Arc<str>,
    /// Replaces the model's manifest policy (None: the model's own).
    pub policy: Option<PolicyParams>,
    /// The symbol patterns it takes (empty for the default and stream routes), as given and
    /// compiled.
    pub symbols: Vec<String>,
    patterns: Vec<glob::Pattern>,
}

impl Route {
    fn new(name: &str, model: &str, policy: Option<PolicyParams>, symbols: &[String]) -> Self {
        Self {
            name: name.into(),
            model: model.into(),
            policy,
            symbols: symbols.to_vec(),
            patterns: symbols.iter().filter_map(|p| glob::Pattern::new(p).ok()).collect(),
        }
    }
}

/// The engine's route table: the default route (id 0), the config routes in their order, then
/// one stream route per model name, added when the name goes live. Ids never change.
#[derive(Clone, Debug)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// The table for `default_model` and the config's routes (already validated).
    pub fn new(default_model: &str, specs: &[RouteSpec]) -> Self {
        let mut routes = Vec::with_capacity(MAX_ROUTES);
        routes.push(Route::new("default", default_model, None, &[]));
        for (i, s) in specs.iter().take(MAX_CONFIG_ROUTES).enumerate() {
            routes.push(Route::new(&s.name(i + 1), s.model_name(), s.policy, &s.symbols));
        }
        Self { routes }
    }

    /// The route a tick of `symbol` takes when its stream names no model: the first config
    /// route that matches it, else the default.
    pub fn for_symbol(&self, symbol: &str) -> RouteId {
        let matches = |r: &Route| r.patterns.iter().any(|p| p.matches(symbol));
        self.routes.iter().position(matches).map_or(DEFAULT_ROUTE, |i| i as RouteId)
    }

    /// The stream route of `model`, added if it has none (None: the table is full).
    pub fn stream_route(&mut self, model: &str) -> Option<RouteId> {
        let name = format!("stream:{model}");
        if let Some(i) = self.routes.iter().position(|r| *r.name == *name) {
            return Some(i as RouteId);
        }
        if self.routes.len() >= MAX_ROUTES {
            return None;
        }
        self.routes.push(Route::new(&name, model, None, &[]));
        Some((self.routes.len() - 1) as RouteId)
    }

    /// Adds `spec` (which must be named) as a route, or replaces the route of its name, whose id,
    /// and so whose positions, stay. Returns its id, or why not.
    pub fn set(&mut self, spec: &RouteSpec) -> Result<RouteId, String> {
        let name = spec.name.as_deref().ok_or("a route set at run time needs a name")?;
        let problems = problems(std::slice::from_ref(spec));
        if !problems.is_empty() {
            return Err(problems.iter().map(|p| p.detail.clone()).collect::<Vec<_>>().join("; "));
        }
        let route = Route::new(name, spec.model_name(), spec.policy, &spec.symbols);
        match self.routes.iter().position(|r| *r.name == *name) {
            Some(i) => {
                self.routes[i] = route;
                Ok(i as RouteId)
            }
            None if self.routes.len() < MAX_ROUTES => {
                self.routes.push(route);
                Ok((self.routes.len() - 1) as RouteId)
            }
            None => Err(format!("the route table is full ({MAX_ROUTES} routes)")),
        }
    }

    /// Route `id` (None: no such route).
    pub fn get(&self, id: RouteId) -> Option<&Route> {
        self.routes.get(id as usize)
    }

    /// Every route, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: Option<&str>, symbols: &[&str], model: &str) -> RouteSpec {
        RouteSpec {
            name: name.map(Into::into),
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            model: model.into(),
            policy: None,
        }
    }

    #[test]
    fn a_route_too_big_to_match_cheaply_is_refused_with_a_short_message() {
        let many: Vec<String> = (0..=MAX_ROUTE_SYMBOLS).map(|k| format!("S{k}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let p = problems(&[spec(Some("wide"), &many, "mlp")]);
        assert!(p.has("routes[0]", Kind::OutOfRange), "{p:?}");
        assert!(problems(&[spec(Some("wide"), &many[..MAX_ROUTE_SYMBOLS], "mlp")]).is_empty());
        let huge = "B".repeat(1 << 20);
        for s in [spec(Some(&huge), &["X"], "mlp"), spec(Some("x"), &[&huge], "mlp"), spec(Some("x"), &["X"], &huge)] {
            let p = problems(&[s]);
            assert!(p.has("routes[0]", Kind::OutOfRange), "{p:?}");
            assert!(p.iter().all(|p| p.detail.len() < 200), "the message quotes a clipped text");
        }
        let mut routes = Routes::new("mlp", &[]);
        assert!(routes.set(&spec(Some("x"), &[&huge], "mlp")).is_err(), "SetRoute goes through the same checks");
    }

    #[test]
    fn the_first_matching_route_takes_a_symbol_and_the_rest_go_to_the_default() {
        let specs = [spec(Some("majors"), &["BTC*", "ETHUSDT"], "tcn"), spec(None, &["*USDT"], "lstm")];
        let routes = Routes::new("mlp", &specs);
        assert_eq!(routes.for_symbol("BTCUSDT"), 1);
        assert_eq!(routes.for_symbol("ETHUSDT"), 1, "exact name, listed first");
        assert_eq!(routes.for_symbol("SOLUSDT"), 2);
        assert_eq!(routes.for_symbol("ETHBTC"), DEFAULT_ROUTE);
        assert_eq!(&*routes.get(2).unwrap().name, "route-2");
        let models: Vec<&str> = routes.iter().map(|r| &*r.model).collect();
        assert_eq!(models, ["mlp", "tcn", "lstm"]);
    }

    #[test]
    fn stream_routes_are_added_once_per_model_and_keep_their_ids() {
        let mut routes = Routes::new("mlp", &[spec(None, &["X"], "tcn")]);
        let tcn = routes.stream_route("tcn").unwrap();
        assert_eq!(tcn, 2);
        assert_eq!(routes.stream_route("mlp"), Some(3));
        assert_eq!(routes.stream_route("tcn"), Some(tcn));
        assert_eq!(routes.for_symbol("Y"), DEFAULT_ROUTE, "stream routes match no symbol");
        for i in 0..MAX_ROUTES {
            routes.stream_route(&format!("m{i}"));
        }
        assert_eq!(routes.iter().count(), MAX_ROUTES);
        assert_eq!(routes.stream_route("one-too-many"), None);
    }

    #[test]
    fn a_route_set_at_run_time_replaces_its_name_or_is_added() {
        let mut routes = Routes::new("mlp", &[spec(Some("majors"), &["BTC*"], "mlp")]);
        assert_eq!(routes.set(&spec(Some("majors"), &["ETH*"], "tcn")), Ok(1), "same name, same id");
        assert_eq!((routes.for_symbol("ETHUSDT"), routes.for_symbol("BTCUSDT")), (1, DEFAULT_ROUTE));
        assert_eq!(&*routes.get(1).unwrap().model, "tcn");
        assert_eq!(routes.set(&spec(Some("alts"), &["SOL*"], "lstm")), Ok(2));
        assert!(routes.set(&spec(None, &["X"], "m")).unwrap_err().contains("needs a name"));
        assert!(routes.set(&spec(Some("default"), &["X"], "m")).unwrap_err().contains("reserved"));
        assert!(routes.set(&spec(Some("x"), &["[X"], "m")).unwrap_err().contains("symbol pattern"));
    }

    #[test]
    fn bad_routes_are_refused_with_every_reason() {
        let mut bad = spec(Some("default"), &[], "a@2@3");
        bad.policy = Some(PolicyParams { warmup_ticks: 0, entry_bps: 1.0, exit_bps: 2.0, full_position_bps: 1.0 });
        let specs = [bad, spec(Some("x"), &["[BTC"], "m"), spec(Some("x"), &["A"], "m")];
        let text = format!("{:?}", problems(&specs));
        for want in ["reserved", "must be a model name", "no symbols", "exit_bps", "symbol pattern", "used twice"] {
            assert!(text.contains(want), "{want:?} missing from {text}");
        }
        assert!(problems(&[spec(None, &["BTC*"], "m")]).is_empty());
    }

    #[test]
    fn a_route_may_pin_its_model_to_a_version() {
        let pinned = spec(Some("p"), &["X"], "tcn@2-fp32");
        assert!(problems(std::slice::from_ref(&pinned)).is_empty());
        assert_eq!((pinned.model_name(), pinned.pinned()), ("tcn", Some("2-fp32")));
        assert_eq!(&*Routes::new("mlp", &[pinned]).get(1).unwrap().model, "tcn");
    }

    #[test]
    fn the_model_header_is_a_name_and_an_optional_version() {
        assert_eq!(parse_model_header("quantd-tcn"), Some(("quantd-tcn", "")));
        assert_eq!(parse_model_header("quantd-tcn@2"), Some(("quantd-tcn", "2")));
        for bad in ["", "@2", "m@", "m@2@3", "../m", "a/b"] {
            assert_eq!(parse_model_header(bad), None, "{bad:?}");
        }
    }
}
