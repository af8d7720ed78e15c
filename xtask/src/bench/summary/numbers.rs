//! How the summary writes numbers, the same in its table and in every `summary.json` so far, so
//! that figures from different runs compare: whole numbers rounded half to even, rounded
//! figures to a number of decimals (half to even on the exact binary value), and other floats
//! in their shortest form that reads back to the same value (`0.75`, `1.0`, `1e-05`).

/// `x` rounded to a whole number, half to even.
pub fn whole(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// `x` rounded to `digits` decimals: the float nearest to the correctly rounded decimal.
pub fn round_to(x: f64, digits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.digits$}").parse().unwrap_or(x)
}

/// The shortest decimal that reads back as `x`, with a `.0` on whole numbers and a signed,
/// two-digit exponent where one is used (`1e+16`, `1e-05`).
pub fn shortest(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let debug = format!("{x:?}");
    let Some((mantissa, exponent)) = debug.split_once('e') else {
        return debug;
    };
    let (sign, digits) = match exponent.strip_prefix('-') {
        Some(digits) => ('-', digits),
        None => ('+', exponent),
    };
    format!("{mantissa}e{sign}{digits:0>2}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_to_even_and_writes_the_shortest_form() {
        assert_eq!(whole(2.5), 2);
        assert_eq!(whole(3.5), 4);
        assert_eq!(round_to(0.125, 2), 0.12);
        assert_eq!(round_to(0.375, 2), 0.38);
        assert_eq!(shortest(1.0), "1.0");
        assert_eq!(shortest(0.75), "0.75");
        assert_eq!(shortest(1e16), "1e+16");
        assert_eq!(shortest(1e-5), "1e-05");
        assert_eq!(shortest(123.4), "123.4");
    }
}
