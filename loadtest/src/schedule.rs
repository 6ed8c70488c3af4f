//! When each tick of a stream is due: a fixed interval, or Poisson arrivals (exponential gaps)
//! from a seeded generator, so the sender and the receiver can replay the same schedule.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};

pub struct Schedule {
    rate: f64,
    poisson: Option<(StdRng, Exp<f64>)>,
    i: u64,
    at: f64,
}

impl Schedule {
    pub fn new(rate: f64, poisson: bool, seed: u64) -> Self {
        let poisson = poisson.then(|| (StdRng::seed_from_u64(seed), Exp::new(rate).expect("rate > 0")));
        Self { rate, poisson, i: 0, at: 0.0 }
    }

    /// Offset from the start of the run of the next tick.
    pub fn next_offset(&mut self) -> Duration {
        let offset = match &mut self.poisson {
            None => self.i as f64 / self.rate,
            Some((rng, exp)) => {
                let t = self.at;
                self.at += exp.sample(rng);
                t
            }
        };
        self.i += 1;
        Duration::from_secs_f64(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_poisson_schedules_have_the_asked_rate_and_replay_identically() {
        let mut f = Schedule::new(1000.0, false, 1);
        assert_eq!(f.next_offset(), Duration::ZERO);
        assert_eq!(f.next_offset(), Duration::from_millis(1));
        let (mut a, mut b) = (Schedule::new(1000.0, true, 7), Schedule::new(1000.0, true, 7));
        let last = (0..100_000).map(|_| a.next_offset()).last().unwrap();
        assert!((last.as_secs_f64() - 100.0).abs() < 2.0, "{last:?}");
        let mut a = Schedule::new(1000.0, true, 7);
        assert!((0..1000).all(|_| a.next_offset() == b.next_offset()));
    }
}
