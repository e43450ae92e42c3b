//! The reconnect schedule: gRPC's published connection backoff (1 s, × 1.6, capped at 120 s,
//! ± 20 % jitter), reset once a connection has synced.

use std::time::Duration;

/// Backoff parameters; [`Backoff::default`] is gRPC's schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    /// Each delay is drawn from `base × (1 ± jitter)`, so clients cut off together do not come
    /// back together.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            max: Duration::from_secs(120),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before retry `attempt` (0 = the first retry after a failure), without jitter.
    pub fn base(&self, attempt: u32) -> Duration {
        let f = self.multiplier.powi(attempt.min(64) as i32);
        let secs = (self.initial.as_secs_f64() * f).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// The delay before retry `attempt`, with jitter from `unit` in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base(attempt).as_secs_f64();
        let spread = base * self.jitter;
        Duration::from_secs_f64((base - spread + 2.0 * spread * unit).max(0.0))
    }

    /// The delay before retry `attempt` with random jitter.
    pub fn next_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.initial.is_zero() || self.max < self.initial {
            return Err("reconnect backoff: need 0 < initial <= max".into());
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err("reconnect backoff: multiplier must be >= 1".into());
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err("reconnect backoff: jitter must be in [0, 1)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_schedule() {
        let b = Backoff::default();
        let secs: Vec<f64> = (0..14).map(|n| b.base(n).as_secs_f64()).collect();
        let want = [
            1.0,
            1.6,
            2.56,
            4.096,
            6.5536,
            10.48576,
            16.777216,
            26.8435456,
            42.94967296,
            68.719476736,
            109.9511627776,
            120.0,
            120.0,
            120.0,
        ];
        for (got, want) in secs.iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{secs:?}");
        }
        assert_eq!(b.base(10_000), Duration::from_secs(120));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(800));
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(1000));
        assert!((b.delay(0, 0.999_999).as_secs_f64() - 1.2).abs() < 1e-5);
        for n in 0..20 {
            let d = b.next_delay(n).as_secs_f64();
            let base = b.base(n).as_secs_f64();
            assert!(d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9, "{n}: {d}");
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let ok = Backoff::default();
        assert!(ok.validate().is_ok());
        for bad in [
            Backoff {
                initial: Duration::ZERO,
                ..ok
            },
            Backoff {
                multiplier: 0.5,
                ..ok
            },
            Backoff { jitter: 1.0, ..ok },
            Backoff {
                max: Duration::from_millis(10),
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
