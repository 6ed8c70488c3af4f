//! When each tick of a run is due, as offsets from the start: a fixed interval, Poisson arrivals
//! (exponential gaps from a seeded generator), or the recorded exchange timestamps of a tick file
//! (optionally sped up). The whole schedule is computed before the run (8 bytes a tick), so the
//! pacer thread and the receivers read the same due times.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};

/// How ticks are spaced in time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// `rate` ticks per second, evenly spaced.
    Fixed { rate: f64 },
    /// Poisson arrivals at `rate` per second on average.
    Poisson { rate: f64 },
    /// The gaps between the recorded exchange timestamps, divided by `speed`.
    Recorded { speed: f64 },
}

impl Pace {
    pub fn validate(&self) -> anyhow::Result<()> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        match *self {
            Pace::Fixed { rate } | Pace::Poisson { rate } if !ok(rate) => anyhow::bail!("--rate must be positive"),
            Pace::Recorded { speed } if !ok(speed) => anyhow::bail!("--speed must be positive"),
            _ => Ok(()),
        }
    }
}

/// Due offsets in nanoseconds of every tick sent in `span_ns`. `recorded` holds the exchange
/// timestamps of the source ticks (for `Pace::Recorded`); the file is replayed in a loop, each
/// pass shifted by the file's span so time keeps increasing.
pub fn offsets(pace: Pace, span_ns: u64, seed: u64, recorded: &[i64]) -> anyhow::Result<Vec<u64>> {
    pace.validate()?;
    let mut out = Vec::new();
    match pace {
        Pace::Fixed { rate } => {
            let n = (span_ns as f64 * rate / 1e9).ceil() as u64;
            out.extend((0..n).map(|i| (i as f64 * 1e9 / rate) as u64));
        }
        Pace::Poisson { rate } => {
            let (mut rng, exp) = (StdRng::seed_from_u64(seed), Exp::new(rate)?);
            let mut at = 0.0;
            while (at as u64) < span_ns {
                out.push(at as u64);
                at += exp.sample(&mut rng) * 1e9;
            }
        }
        Pace::Recorded { speed } => {
            let (Some(first), Some(last)) = (recorded.first(), recorded.last()) else {
                anyhow::bail!("recorded pace needs recorded ticks");
            };
            // One pass lasts the file's span plus one mean gap, so the loop does not burst.
            let file_span = (last - first) as f64 + (last - first) as f64 / recorded.len().max(1) as f64;
            let file_span = file_span.max(1.0) / speed;
            'passes: for pass in 0.. {
                for ts in recorded {
                    let at = pass as f64 * file_span + (ts - first) as f64 / speed;
                    if at as u64 >= span_ns {
                        break 'passes;
                    }
                    out.push(at as u64);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_poisson_schedules_have_the_asked_rate_and_replay_identically() {
        let f = offsets(Pace::Fixed { rate: 1000.0 }, 2_000_000_000, 1, &[]).unwrap();
        assert_eq!(f.len(), 2000);
        assert_eq!(&f[..2], &[0, 1_000_000]);
        let a = offsets(Pace::Poisson { rate: 1000.0 }, 100_000_000_000, 7, &[]).unwrap();
        assert!((a.len() as f64 - 100_000.0).abs() < 2_000.0, "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(a, offsets(Pace::Poisson { rate: 1000.0 }, 100_000_000_000, 7, &[]).unwrap());
    }

    #[test]
    fn recorded_pace_follows_the_file_sped_up_and_loops() {
        // Ticks at 0, 10 ms, 30 ms: one pass lasts 40 ms (30 ms + one mean gap of 10 ms).
        let ts = [1_000_000_000, 1_010_000_000, 1_030_000_000];
        let o = offsets(Pace::Recorded { speed: 1.0 }, 85_000_000, 1, &ts).unwrap();
        assert_eq!(o, [0, 10_000_000, 30_000_000, 40_000_000, 50_000_000, 70_000_000, 80_000_000]);
        let fast = offsets(Pace::Recorded { speed: 10.0 }, 8_500_000, 1, &ts).unwrap();
        assert_eq!(fast, [0, 1_000_000, 3_000_000, 4_000_000, 5_000_000, 7_000_000, 8_000_000]);
        assert!(offsets(Pace::Recorded { speed: 0.0 }, 1, 1, &ts).is_err());
        assert!(offsets(Pace::Recorded { speed: 1.0 }, 1, 1, &[]).is_err());
    }
}
