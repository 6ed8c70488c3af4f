//! The execution latency a replay charges each signal with, drawn from a live run: the
//! end-to-end percentile distribution `quantd-load --json` measured against a real server
//! (gateway → quantd → gateway, engine included), instead of the replay's own engine time.
//!
//! Runs on the replay's thread. Draws are seeded, so a replay stays reproducible.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng, rngs::SmallRng};

/// Why a latency profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It is not a quantd-load report.
    #[error("{path}: not a quantd-load JSON report with an end-to-end `distribution`: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is missing.
        msg: String,
    },
}

/// An empirical latency distribution: (quantile in [0, 1], ns) points, increasing.
#[derive(Clone, Debug)]
pub struct LatencyProfile {
    /// The quantd-load report it came from.
    pub source: PathBuf,
    points: Vec<(f64, f64)>,
    rng: SmallRng,
}

impl LatencyProfile {
    /// From a `quantd-load --json` report: its `distribution` of (percentile 0–100, µs) pairs.
    pub fn from_load_report(path: &Path, seed: u64) -> Result<Self, ProfileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ProfileError::Io { path: path.to_owned(), source })?;
        let format = |msg: String| ProfileError::Format { path: path.to_owned(), msg };
        let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        let dist =
            doc.get("distribution").and_then(|d| d.as_array()).ok_or_else(|| format("no distribution".into()))?;
        let mut points = Vec::with_capacity(dist.len());
        for p in dist {
            let pair = p.as_array().filter(|a| a.len() == 2).ok_or_else(|| format(format!("bad point {p}")))?;
            let (q, us) = (pair[0].as_f64(), pair[1].as_f64());
            match (q, us) {
                (Some(q), Some(us)) if (0.0..=100.0).contains(&q) && us.is_finite() && us >= 0.0 => {
                    points.push((q / 100.0, us * 1e3))
                }
                _ => return Err(format(format!("bad point {p}"))),
            }
        }
        Self::from_points(path, points, seed).map_err(format)
    }

    fn from_points(source: &Path, mut points: Vec<(f64, f64)>, seed: u64) -> Result<Self, String> {
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        if points.len() < 2 {
            return Err("fewer than two points".into());
        }
        // Latency never decreases with the quantile.
        for i in 1..points.len() {
            points[i].1 = points[i].1.max(points[i - 1].1);
        }
        Ok(Self { source: source.to_owned(), points, rng: SmallRng::seed_from_u64(seed) })
    }

    /// The latency at quantile `q` (linear between points; clamped to the ends).
    pub fn at(&self, q: f64) -> u64 {
        let p = &self.points;
        let i = p.partition_point(|&(x, _)| x < q);
        let v = if i == 0 {
            p[0].1
        } else if i >= p.len() {
            p[p.len() - 1].1
        } else {
            let ((q0, v0), (q1, v1)) = (p[i - 1], p[i]);
            if q1 > q0 { v0 + (v1 - v0) * (q - q0) / (q1 - q0) } else { v1 }
        };
        v.round() as u64
    }

    /// One draw from the distribution, ns.
    pub fn sample(&mut self) -> u64 {
        let q = self.rng.random::<f64>();
        self.at(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_load_report_and_draws_from_it() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("run.json");
        std::fs::write(
            &f,
            r#"{"label": "x", "distribution": [[0.0, 50.0], [50.0, 100.0], [99.0, 300.0], [100.0, 1000.0]]}"#,
        )
        .unwrap();
        let mut p = LatencyProfile::from_load_report(&f, 7).unwrap();
        assert_eq!(p.at(0.5), 100_000);
        assert_eq!(p.at(0.25), 75_000);
        assert_eq!(p.at(1.0), 1_000_000);
        let mut draws: Vec<u64> = (0..20_000).map(|_| p.sample()).collect();
        draws.sort_unstable();
        let median = draws[draws.len() / 2] as f64;
        assert!((median - 100_000.0).abs() < 5_000.0, "{median}");
        assert!(draws.iter().all(|&v| (50_000..=1_000_000).contains(&v)));

        std::fs::write(&f, r#"{"distribution": []}"#).unwrap();
        assert!(LatencyProfile::from_load_report(&f, 7).unwrap_err().to_string().contains("fewer than two"));
    }
}
