//! Randomness, injected: renewal times are jittered with samples drawn here, so that a test can
//! fix the sample and know the exact time, as the injected clock lets it know the exact now.

use std::fmt::Debug;

/// A source of samples uniformly distributed in `[0, 1)`.
pub(crate) trait Random: Send + Sync + Debug + 'static {
    fn sample(&self) -> f64;
}

/// The thread's random number generator.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ThreadRng;

impl Random for ThreadRng {
    fn sample(&self) -> f64 {
        rand::random::<f64>()
    }
}

/// The same sample every time.
#[derive(Clone, Copy, Debug)]
#[cfg(test)]
pub(crate) struct Fixed(pub f64);

#[cfg(test)]
impl Random for Fixed {
    fn sample(&self) -> f64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_lie_in_the_unit_interval() {
        for _ in 0..1000 {
            let s = ThreadRng.sample();
            assert!((0.0..1.0).contains(&s), "{s}");
        }
        assert_eq!(Fixed(0.25).sample(), 0.25);
    }
}
