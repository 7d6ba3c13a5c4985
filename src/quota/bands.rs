//! Bands of restriction: which band a workspace's usage puts it in, what that band
//! restricts and slows, and which bands it has newly entered.
//!
//! Pure arithmetic over validated settings, so the service only asks questions of it.

use super::settings::{BandSettings, QuotaClass};

/// The bands of the settings, by increasing `at`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bands(Vec<BandSettings>);

/// Usage in percent of the cycle's credits, or `None` without credits (no quota).
pub fn percent(used: i64, credits: i64) -> Option<f64> {
    (credits > 0).then(|| used as f64 / credits as f64 * 100.0)
}

impl Bands {
    /// The bands of validated settings.
    pub fn new(bands: Vec<BandSettings>) -> Bands {
        Bands(bands)
    }

    /// The band that `percent` is in, with its number (1 is the lowest band), or `None`
    /// below the first band.
    pub fn current(&self, percent: Option<f64>) -> Option<(usize, &BandSettings)> {
        let percent = percent?;
        self.0
            .iter()
            .enumerate()
            .rev()
            .find(|(_, b)| b.at <= percent)
            .map(|(i, b)| (i + 1, b))
    }

    /// The bands at or below `percent` that `announced` does not hold yet, lowest first.
    pub fn entered<'a>(
        &'a self,
        percent: Option<f64>,
        announced: &'a [f64],
    ) -> impl Iterator<Item = (usize, &'a BandSettings)> + 'a {
        let top = self.current(percent).map_or(0, |(n, _)| n);
        self.0[..top]
            .iter()
            .enumerate()
            .filter(|(_, b)| !announced.contains(&b.at))
            .map(|(i, b)| (i + 1, b))
    }
}

impl BandSettings {
    /// Whether this band restricts `class`; `essential` never is.
    pub fn restricts(&self, class: QuotaClass) -> bool {
        class != QuotaClass::Essential && self.restrict.contains(&class)
    }

    /// The factor applied to the four built-in rates in this band.
    pub fn slow_factor(&self) -> f64 {
        self.slow.unwrap_or(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::settings::QuotaSettings;

    fn bands() -> Bands {
        Bands::new(QuotaSettings::default().bands)
    }

    #[test]
    fn percent_is_used_over_credits() {
        assert_eq!(percent(250, 1000), Some(25.0));
        assert_eq!(percent(1500, 1000), Some(150.0));
        assert_eq!(percent(5, 0), None);
    }

    #[test]
    fn the_current_band_is_the_highest_reached() {
        let b = bands();
        assert_eq!(b.current(None), None);
        assert_eq!(b.current(Some(79.999)), None);
        assert_eq!(b.current(Some(80.0)).map(|c| c.0), Some(1));
        assert_eq!(b.current(Some(119.9)).map(|c| c.0), Some(2));
        assert_eq!(b.current(Some(120.0)).map(|c| c.0), Some(3));
        assert_eq!(b.current(Some(1e9)).map(|c| c.0), Some(4));
    }

    #[test]
    fn bands_restrict_their_classes_but_never_essential() {
        let b = bands();
        let (_, at100) = b.current(Some(100.0)).unwrap();
        assert!(at100.restricts(QuotaClass::Premium));
        assert!(!at100.restricts(QuotaClass::Standard));
        assert_eq!(at100.slow_factor(), 1.0);
        let (_, at120) = b.current(Some(130.0)).unwrap();
        assert!(at120.restricts(QuotaClass::Standard));
        assert!(!at120.restricts(QuotaClass::Essential));
        assert_eq!(at120.slow_factor(), 0.5);
        // Even a band built by hand with `essential` does not restrict it.
        let odd = BandSettings {
            at: 1.0,
            restrict: vec![QuotaClass::Essential],
            slow: None,
        };
        assert!(!odd.restricts(QuotaClass::Essential));
    }

    #[test]
    fn entered_bands_skip_the_announced_ones() {
        let b = bands();
        let ats = |p, ann: &[f64]| -> Vec<f64> { b.entered(p, ann).map(|(_, x)| x.at).collect() };
        assert_eq!(ats(Some(50.0), &[]), Vec::<f64>::new());
        assert_eq!(ats(Some(125.0), &[]), vec![80.0, 100.0, 120.0]);
        assert_eq!(ats(Some(125.0), &[80.0, 100.0]), vec![120.0]);
        assert_eq!(ats(None, &[]), Vec::<f64>::new());
    }
}
